"""Model and adapter artifacts: their content address, and the projections a LoRA adapter wraps.

``dir_hash`` is the production content address of a model or adapter directory: the pool keys every
record by it (``model_version``, ``adapter_version``), so a changed file means regenerated queries.
``LORA_TARGETS`` are the Qwen2-family projection modules every adapter of the project wraps (the
policy, the reward models, the test adapter).
"""
from __future__ import annotations

import hashlib
from pathlib import Path

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def dir_hash(path: str | Path) -> str:
    """Content hash of the files in a model or adapter directory (not of their names' timestamps)."""
    root = Path(path)
    h = hashlib.sha256()
    for p in sorted(x for x in root.rglob("*") if x.is_file()):
        if p.name in ("README.md", "training_args.bin", "DONE", "cmaq_tiny.json") or p.name.startswith("."):
            continue
        h.update(str(p.relative_to(root)).encode())
        with open(p, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]
