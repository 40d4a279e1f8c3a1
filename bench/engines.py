"""Benchmark beam search (width 5) on both engines over the same world items, one process each.

    python bench/engines.py [--items 100] [--no-adapter]

Prints one JSON object: engine start-up seconds, items/s for vLLM and for transformers, and the
ratio (vLLM / HF). Uses the tiny model and its test adapter (built once, cached).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, default=100)
    p.add_argument("--width", type=int, default=5)
    p.add_argument("--no-adapter", action="store_true", help="Beam-search the bare base model.")
    p.add_argument("--seed", type=int, default=29, help="World seed of the items.")
    return p


def main(args: argparse.Namespace) -> dict:
    from cmaq.config import load_config
    from cmaq.engines import make_engine
    from cmaq.engines.tiny import build_test_adapter, world_items

    items = [it.public() for it, _ in world_items(args.seed, args.items)]
    adapter = None if args.no_adapter else str(build_test_adapter())
    base_cfg = load_config().engine
    out = {"bench": "engines", "items": args.items, "width": args.width, "adapter": adapter is not None,
           "max_new_tokens": base_cfg.max_new_tokens, "max_lora_rank": base_cfg.max_lora_rank}
    for backend in ("hf", "vllm"):
        t0 = time.perf_counter()
        engine = make_engine(dataclasses.replace(base_cfg, backend=backend))
        engine.beam(items[:1], width=args.width, adapter=adapter)  # vLLM creates its LLM on first use
        start = time.perf_counter() - t0
        t0 = time.perf_counter()
        results = engine.beam(items, width=args.width, adapter=adapter)
        seconds = time.perf_counter() - t0
        out[f"{backend}_startup_s"] = round(start, 1)
        out[f"{backend}_seconds"] = round(seconds, 2)
        out[f"{backend}_items_per_s"] = round(args.items / seconds, 2)
        out[f"{backend}_errors"] = sum(not r.ok for r in results)
        if hasattr(engine, "close"):
            engine.close()
    out["vllm_over_hf"] = round(out["vllm_items_per_s"] / out["hf_items_per_s"], 3)
    return out


if __name__ == "__main__":
    os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
    print(json.dumps(main(make_parser().parse_args())))
