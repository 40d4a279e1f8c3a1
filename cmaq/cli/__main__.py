"""``python -m cmaq.cli``: the same command line as the ``cmaq`` script."""
from cmaq.cli import main

if __name__ == "__main__":
    main()
