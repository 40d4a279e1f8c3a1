"""What was fixed before the first oracle-space evaluation, and every evaluation run since.

Issue 18's rule: the world and its seed, the test sizes, the probe set, κ and the proxy's definition are
fixed before anything is judged by the oracle, and every evaluated run — discarded ones too — is listed
in the report with its settings. Both live beside the report's tables, so they are committed with it:

- ``fixed.json``: the settings of the first evaluation, written once; a later run whose settings differ
  is not refused (a user may want to try), but the registry records which keys differ and the report
  says so next to that run;
- ``runs.jsonl``: one line per evaluation (when, the settings that tell runs apart, the differences from
  ``fixed.json``, the headline figures), appended, never rewritten.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import time
from pathlib import Path

from training import guards
from training.guards import PROBE_SEED


def proxy_definition_hash() -> str:
    """Hash of the proxy's code (its formula and the exposed-reward figure it multiplies)."""
    source = inspect.getsource(guards.proxy_value) + inspect.getsource(guards.exposed_reward)
    return hashlib.sha256(source.encode()).hexdigest()[:16]


def fixed_settings(cfg) -> dict:
    """The settings the first oracle-space evaluation freezes (``cfg``: the run's CmaqConfig)."""
    w = cfg.world
    return {"world": {"items": w.items, "seed": w.seed}, "test contents": cfg.reproduce.test_contents,
            "probe set": {"contents": cfg.align.probe_contents, "seed": PROBE_SEED, "k": cfg.align.probe_k},
            "lcb kappa": cfg.align.lcb_kappa, "proxy definition": proxy_definition_hash()}


def _differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    keys = sorted(set(a) | set(b))
    out = []
    for k in keys:
        x, y = a.get(k), b.get(k)
        if isinstance(x, dict) and isinstance(y, dict):
            out += _differences(x, y, f"{prefix}{k}.")
        elif x != y:
            out.append(f"{prefix}{k}: {x!r} → {y!r}")
    return out


class RunRegistry:
    """``fixed.json`` and ``runs.jsonl`` in ``folder`` (the report's tables folder)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.fixed_path, self.runs_path = self.folder / "fixed.json", self.folder / "runs.jsonl"

    def check_fixed(self, settings: dict) -> list[str]:
        """Freeze ``settings`` if nothing is frozen yet; otherwise the differences (empty when none)."""
        if not self.fixed_path.exists():
            self.folder.mkdir(parents=True, exist_ok=True)
            self.fixed_path.write_text(json.dumps({"frozen_at": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                                                   "settings": settings}, indent=1))
            return []
        return _differences(json.loads(self.fixed_path.read_text())["settings"], settings)

    def frozen(self) -> dict:
        return json.loads(self.fixed_path.read_text()) if self.fixed_path.exists() else {}

    def record(self, settings: dict, differences: list[str], figures: dict) -> dict:
        """Append this run, unless it repeats the last entry (a resumed run re-evaluating cached rows)."""
        entries = self.entries()
        same = {"settings": settings, "differs_from_fixed": differences, "figures": figures}
        if entries and json.loads(json.dumps({k: entries[-1][k] for k in same}, default=float)) == \
                json.loads(json.dumps(same, default=float)):
            return entries[-1]
        entry = {"run": len(entries) + 1, "when": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                 "settings": settings, "differs_from_fixed": differences, "figures": figures}
        self.folder.mkdir(parents=True, exist_ok=True)
        with self.runs_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(entry, default=float, ensure_ascii=False) + "\n")
        return entry

    def entries(self) -> list[dict]:
        if not self.runs_path.exists():
            return []
        return [json.loads(line) for line in self.runs_path.read_text(encoding="utf-8").splitlines() if line.strip()]
