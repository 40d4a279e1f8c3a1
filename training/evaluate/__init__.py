"""Evaluation of policies against the reward models and the world's oracle, and the reproduction report.

- `offline`: beam top-1 and the simulated A/B exposure per test content, in RM and oracle space;
- `stats`: Pareto fronts, hypervolume, bootstrap intervals;
- `tables`: per-policy summary, hypervolumes per method and per CMAQ iteration, the reward-hacking check;
- `claims`: the paper's claims judged from those tables;
- `report`: CSV/JSON tables, PNG figures and ``reproduction.md`` (``write_evaluation``).

The whole chain behind `cmaq reproduce` is the entry layer's (``cmaq.cli.reproduce``).
"""
