"""Training throughput on one process vs two (`torchrun --nproc_per_node 2`, gloo on the CPU): the same
QSA run (`cmaq train sft`, same data, same global batch, same steps) launched both ways. Prints one JSON
object and writes it to bench/results/train_distributed-<date>.json.

    python bench/train_distributed.py                    # the task model (4 layers x 192), 40 steps of 16
    python bench/train_distributed.py --factory tiny --steps 20

Throughput is the loop's own clock (``train_seconds`` in metrics.json: steps only, no start-up), in
examples and query tokens per second; ``wall_s`` adds start-up (imports, model loading, the process
group). The GPU figures of issue 22 need a GPU machine; none was lent to this project's session, so the
JSON says they were not measured.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--factory", choices=("tiny", "task"), default="task", help="The project's base model.")
    p.add_argument("--steps", type=int, default=40, help="Optimizer steps of each run.")
    p.add_argument("--batch", type=int, default=16, help="Global batch (examples per optimizer step).")
    p.add_argument("--items", type=int, default=640, help="Notes in the generated D_SFT.")
    p.add_argument("--out", default=str(ROOT / "bench" / "results"), help="Where the JSON goes ('' for nowhere).")
    return p


def sft_rows(n: int) -> pa.Table:
    """A D_SFT of ``n`` world notes, each with one of its grammar's queries (the speed does not depend on which)."""
    from cmaq.engines.tiny import world_items

    rows = []
    for it, grammar in world_items(404, n):
        note = it.public()
        rows.append({k: note.get(k) or "" for k in ("content_id", "lang", "category", "title", "body", "shop_name",
                                                     "shop_info")} | {"query": grammar[-1][0] if grammar else note["title"]})
    return pa.Table.from_pylist(rows)


def run(processes: int, data: Path, out: Path, args: argparse.Namespace) -> dict:
    steps_per_epoch = -(-args.items // args.batch)
    settings = [f"model.factory={args.factory!r}", f"sft.batch_size={args.batch}", "sft.lr=1e-3",
                f"sft.epochs={args.steps / steps_per_epoch}", "sft.warmup_steps=2", "sft.checkpoint_every=100000"]
    cli = ["-m", "cmaq.cli", *[a for s in settings for a in ("--set", s)], "train", "sft", "--data", str(data),
           "--out", str(out)]
    launcher = [sys.executable] if processes == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                        "--nproc_per_node", str(processes)]
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // processes))}
    started = time.perf_counter()
    done = subprocess.run([*launcher, *cli], capture_output=True, text=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{processes} process(es) failed:\n{done.stderr[-3000:]}")
    metrics = json.loads((out / "metrics.json").read_text())
    examples = metrics["steps"] * args.batch
    return {"processes": processes, "steps": metrics["steps"], "train_s": metrics["train_seconds"],
            "wall_s": round(wall, 1), "examples_per_s": round(examples / metrics["train_seconds"], 2),
            "loss_last20": metrics["loss_last20"]}


def main(args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "sft.parquet"
        pq.write_table(sft_rows(args.items), data)
        one = run(1, data, Path(tmp) / "one", args)
        two = run(2, data, Path(tmp) / "two", args)
    report = {"bench": "train_distributed", "date": datetime.date.today().isoformat(), "model": args.factory,
              "cpu_cores": os.cpu_count(), "global_batch": args.batch, "one_process": one, "two_processes": two,
              "speedup": round(one["train_s"] / two["train_s"], 3),
              "same_loss": one["loss_last20"] == two["loss_last20"],
              "gpu": "not measured: no GPU machine was lent to this session (issue 22, item 4)"}
    print(json.dumps(report, indent=2))
    if args.out:
        path = Path(args.out) / f"train_distributed-{report['date']}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main(make_parser().parse_args())
