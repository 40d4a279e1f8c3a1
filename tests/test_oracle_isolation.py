"""The oracle is the platform's hidden truth: serving and training code must never reach it."""
import json
import subprocess
import sys

from conftest import REPO

# Modules allowed to import the oracle: the world generator (it samples clicks from true CTR),
# the demo that runs it, and evaluation (which compares methods against the truth).
ALLOWED = ("cmaq.world.oracle", "cmaq.world.generate", "training.evaluate",
           "cmaq.cli.world", "cmaq.cli.demo", "cmaq.cli.reproduce", "cmaq.cli.evaluation")

PROBE = r"""
import importlib, json, pkgutil, sys
allowed = tuple(sys.argv[1].split(","))
imported, failed = [], {}
for top in ("cmaq", "filters", "training", "jobs"):
    pkg = importlib.import_module(top)
    for info in pkgutil.walk_packages(pkg.__path__, prefix=top + "."):
        if info.name.startswith(allowed):
            continue
        try:
            importlib.import_module(info.name)
            imported.append(info.name)
        except ImportError as exc:  # an optional extra missing is reported, not hidden
            failed[info.name] = str(exc)
print(json.dumps({"imported": imported, "failed": failed,
                  "oracle_loaded": "cmaq.world.oracle" in sys.modules}))
"""


def test_no_serving_or_training_module_imports_the_oracle():
    out = subprocess.run([sys.executable, "-c", PROBE, ",".join(ALLOWED)], cwd=REPO, capture_output=True,
                         text=True, check=True)
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert not report["failed"], report["failed"]
    assert "cmaq.cli" in report["imported"] and "cmaq.world.lexicon" in report["imported"]
    assert report["oracle_loaded"] is False, "a serving/training module imported cmaq.world.oracle"


def test_the_probe_would_notice_an_indirect_import():
    # Sanity check of the probe itself: importing the generator pulls the oracle in indirectly.
    code = "import sys, cmaq.world.generate; print('cmaq.world.oracle' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"
