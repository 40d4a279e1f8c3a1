"""Evaluation of policies against the reward models and the world's oracle, and the reproduction report.

- `offline`: beam top-1 and the simulated A/B exposure per test content, in RM and oracle space;
- `pool_ab`: a simulated A/B of a published pool's arms, read through the cache's reader (the demo's);
- `stats`: Pareto fronts, hypervolume, bootstrap intervals;
- `tables`: per-policy summary, hypervolumes per method and per CMAQ iteration, the reward-hacking check;
- `claims`: the paper's claims judged from those tables;
- `report`: CSV/JSON tables, PNG figures and ``reproduction.md`` (``write_evaluation``).

The whole chain behind `cmaq reproduce` is the entry layer's (``cmaq.cli.reproduce``).
"""
