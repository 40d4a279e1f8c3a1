"""The wheel `make dist` ships to the cluster carries the code and the data the job reads."""
import subprocess
import sys
import zipfile

from conftest import REPO


def test_wheel_contains_packages_and_data(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path), str(REPO)], check=True, capture_output=True, timeout=300)
    wheel = next(tmp_path.glob("cmaq-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in ("jobs/nightly.py", "jobs/nearline.py", "cmaq/pool/sinks.py", "cmaq/pool/reader.py",
                   "cmaq/data/crosswoz_beijing.json", "filters/chain.py", "jobs/data/builders.py",
                   "cmaq/data/task-model/model.safetensors", "cmaq/data/task-model/recipe.json",
                   "cmaq/data/task-model/tokenizer.json"):
        assert needed in names, needed
    assert any(n.startswith("filters/data/") and n.endswith(".txt") for n in names)
    assert not any(n.startswith("tests/") for n in names)
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "cmaq = cmaq.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()
