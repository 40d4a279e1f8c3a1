"""Benchmark beam search (width 5) over the same world items: the bare model, the test adapter per
request (LoRA) and the test adapter merged into the base, on vLLM and on transformers.

    python bench/engines.py [--items 100] [--engines vllm,hf] [--out bench/results/engines.json]

Prints one JSON object: per run the engine's start-up seconds and items/s; for each engine the
merged adapter's time over the bare model's and the share of items whose top-1 query the merged
model and the LoRA path agree on. Uses the tiny model and its test adapter (built once, cached).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

RUNS = ("bare", "lora", "merged")


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, default=100)
    p.add_argument("--width", type=int, default=5)
    p.add_argument("--engines", default="vllm,hf", help="Comma-separated backends to run.")
    p.add_argument("--seed", type=int, default=29, help="World seed of the items.")
    p.add_argument("--out", default="", help="Also write the JSON here.")
    return p


def timed_beam(cfg, items, width: int, adapter: str | None) -> tuple[dict, list]:
    from cmaq.engines import make_engine

    t0 = time.perf_counter()
    engine = make_engine(cfg)
    engine.beam(items[:1], width=width, adapter=adapter)  # vLLM creates its LLM on first use
    start = time.perf_counter() - t0
    t0 = time.perf_counter()
    results = engine.beam(items, width=width, adapter=adapter)
    seconds = time.perf_counter() - t0
    if hasattr(engine, "close"):
        engine.close()
    return {"startup_s": round(start, 1), "seconds": round(seconds, 2),
            "items_per_s": round(len(items) / seconds, 2), "errors": sum(not r.ok for r in results)}, results


def top1(results) -> list[str | None]:
    return [r.candidates[0].text if r.candidates else None for r in results]


def main(args: argparse.Namespace) -> dict:
    from cmaq.config import load_config
    from cmaq.engines import base_model_dir
    from cmaq.engines.merged import merged_model_dir
    from cmaq.engines.tiny import build_test_adapter, world_items

    items = [it.public() for it, _ in world_items(args.seed, args.items)]
    adapter = str(build_test_adapter())
    cfg = load_config().engine
    base = base_model_dir(None, cfg.model_dir)
    t0 = time.perf_counter()
    merged = str(merged_model_dir(base, adapter, cfg.merge_cache or None))
    out = {"bench": "engines", "items": args.items, "width": args.width, "max_new_tokens": cfg.max_new_tokens,
           "merge_s": round(time.perf_counter() - t0, 1)}
    for backend in args.engines.split(","):
        on = dataclasses.replace(cfg, backend=backend, model_dir=base)
        runs = {"bare": (on, None), "lora": (on, adapter), "merged": (dataclasses.replace(on, model_dir=merged), None)}
        tops = {}
        for name in RUNS:
            run_cfg, run_adapter = runs[name]
            out[f"{backend}_{name}"], results = timed_beam(run_cfg, items, args.width, run_adapter)
            tops[name] = top1(results)
        out[f"{backend}_merged_over_bare"] = round(out[f"{backend}_merged"]["seconds"] /
                                                   out[f"{backend}_bare"]["seconds"], 3)
        out[f"{backend}_lora_over_bare"] = round(out[f"{backend}_lora"]["seconds"] /
                                                 out[f"{backend}_bare"]["seconds"], 3)
        out[f"{backend}_top1_merged_equals_lora"] = round(
            sum(a == b and a is not None for a, b in zip(tops["merged"], tops["lora"])) / len(items), 3)
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
    print(json.dumps(main(make_parser().parse_args())))
