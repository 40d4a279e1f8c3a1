"""The layer rule (ARCHITECTURE.md), checked two ways.

Statically: every import statement of every module, at module level or inside a function, is read
from the source and checked against what its layer may import. Dynamically: each layer's modules are
imported in a fresh interpreter where the packages that layer must do without cannot be imported.

    entry points (cmaq.cli)            may import everything; nothing imports them
    jobs       (Spark)                 ground, filters            never training
    training   (torch)                 ground, filters            never jobs, never pyspark
    filters                            ground
    ground     (the rest of cmaq)      nothing of ours            never pyspark; torch / vllm only in
                                                                  engines, losses, shared_prefix
"""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

PACKAGES = ("cmaq", "filters", "training", "jobs")
MAY_IMPORT = {
    "entry": {"entry", "jobs", "training", "filters", "ground"},
    "jobs": {"jobs", "filters", "ground"},
    "training": {"training", "filters", "ground"},
    "filters": {"filters", "ground"},
    "ground": {"ground"},
}
SPARK = ("pyspark",)
TORCH_LIKE = ("torch", "vllm", "transformers", "peft", "safetensors", "trl", "accelerate")
GROUND_TORCH_MODULES = ("cmaq.engines", "cmaq.losses", "cmaq.shared_prefix")


def layer_of(module: str) -> str | None:
    top = module.split(".")[0]
    if top not in PACKAGES:
        return None
    if module == "cmaq.cli" or module.startswith("cmaq.cli."):
        return "entry"
    return "ground" if top == "cmaq" else top


def modules() -> dict[str, Path]:
    found = {}
    for top in PACKAGES:
        for path in sorted((REPO / top).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) of every import statement in the file, wherever it stands."""
    out = []
    for node in ast.walk(ast.parse(path.read_text("utf-8"), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
    return out


def violations(module: str, path: Path) -> list[str]:
    own = layer_of(module)
    found = []
    for line, target in imports_of(path):
        where = f"{path.relative_to(REPO) if path.is_relative_to(REPO) else path}:{line} imports {target}"
        other = layer_of(target)
        if other is not None and other not in MAY_IMPORT[own]:
            found.append(f"{where} ({own} may not import {other})")
        root = target.split(".")[0]
        if root in SPARK and own not in ("jobs", "entry"):
            found.append(f"{where} (only jobs and the entry points use Spark)")
        if root in TORCH_LIKE and (own == "jobs" or own == "filters" or (
                own == "ground" and not module.startswith(GROUND_TORCH_MODULES))):
            found.append(f"{where} (torch and vllm belong to the engines, losses, shared prefixes and training)")
    return found


def test_every_import_keeps_the_layer_rule():
    found = [v for module, path in modules().items() for v in violations(module, path)]
    assert not found, "\n".join(found)


def test_the_static_check_sees_a_forbidden_import_inside_a_function(tmp_path):
    # The rule must catch what a lazy import would hide from an import-time check.
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from training.align import run_align\n    import pyspark\n")
    found = violations("cmaq.rewards", bad)
    assert len(found) == 2 and "ground may not import training" in found[0]
    assert violations("cmaq.cli.train", bad) == []


# A fresh interpreter that cannot import the named top-level packages, then imports modules.
PROBE = r"""
import importlib, importlib.abc, json, sys
blocked = set(sys.argv[1].split(","))
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked or any(name == b or name.startswith(b + ".") for b in blocked):
            raise ImportError(f"blocked for this layer: {name}")
        return None
sys.meta_path.insert(0, Block())
failed = {}
for name in sys.argv[2].split(","):
    try:
        importlib.import_module(name)
    except Exception as exc:
        failed[name] = f"{type(exc).__name__}: {exc}"
print(json.dumps(failed))
"""


def import_with_blocked(names: list[str], blocked: tuple[str, ...]) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, ",".join(blocked), ",".join(names)], cwd=REPO,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def of_layer(layer: str, *, skip: tuple[str, ...] = ()) -> list[str]:
    names = [m for m in modules() if layer_of(m) == layer and not m.startswith(skip)]
    assert names, layer
    return names


def test_the_ground_imports_without_spark_torch_vllm_or_the_upper_layers():
    # The transformers engine is the one ground module that needs torch to import: make_engine imports
    # it only when an "hf" engine is built.
    names = of_layer("ground", skip=("cmaq.engines.hf_engine",))
    assert import_with_blocked(names, ("pyspark", *TORCH_LIKE, "filters", "training", "jobs")) == {}


def test_every_training_module_imports_where_pyspark_cannot():
    assert import_with_blocked(of_layer("training"), ("pyspark", "jobs", "cmaq.cli")) == {}


def test_filters_and_jobs_import_without_the_layers_they_may_not_use():
    assert import_with_blocked(of_layer("filters"), ("pyspark", *TORCH_LIKE, "training", "jobs")) == {}
    assert import_with_blocked(of_layer("jobs"), ("training", "cmaq.cli", *TORCH_LIKE)) == {}


def test_the_dynamic_check_notices_a_blocked_import():
    failed = import_with_blocked(["jobs.nightly"], ("pyspark",))
    assert "jobs.nightly" in failed and "blocked for this layer: pyspark" in failed["jobs.nightly"]


@pytest.mark.parametrize("module", ["cmaq.cli", "cmaq.cli.reproduce"])
def test_nothing_imports_the_entry_points(module):
    importers = [m for m, path in modules().items() if layer_of(m) != "entry"
                 and any(t == module or t.startswith(module + ".") for _, t in imports_of(path))]
    assert importers == []


# The command line as a serving host without Spark or torch runs it: the root help lists every command
# without importing any, and reading the cache needs only the ground.
CLI_PROBE = PROBE.split("failed = {}")[0] + r"""
from cmaq.cli import main
try:
    main(sys.argv[2].split("|"), standalone_mode=False)
except SystemExit as exc:
    print("exit", exc.code)
print("loaded", sorted(m for m in sys.modules if m.split(".")[0] in ("pyspark", "torch", "jobs", "training")))
"""


def test_cli_help_and_cache_reads_run_without_spark_or_torch(tmp_path):
    from cmaq.pool.sinks import encode_value, open_sink

    url = f"sqlite:///{tmp_path}/kv.db"
    sink = open_sink(url)
    sink.write("v1", [("c1", encode_value("c1", "v1", [{"rank": 0, "query": "hotpot near me"}]))])
    sink.set_pointer("v1")
    blocked = ",".join(("pyspark", *TORCH_LIKE, "jobs", "training"))
    for args, expect in ((["--help"], "reproduce"), (["pool", "--help"], "kv-size"),
                         (["pool", "get", "c1", "--kv-url", url], "hotpot near me")):
        out = subprocess.run([sys.executable, "-c", CLI_PROBE, blocked, "|".join(args)], cwd=REPO,
                             capture_output=True, text=True)
        assert out.returncode == 0 and expect in out.stdout, (args, out.stdout[-2000:], out.stderr[-2000:])
        assert "loaded []" in out.stdout, out.stdout
