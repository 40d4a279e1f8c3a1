"""The nightly at production scale: world items through the whole job (read, plan, generate, filter,
assemble, gates, publish to Parquet and the SQLite cache) with an engine double that sleeps a
log-normal per-item latency (median 20 ms, p99 10.2x the median: a stand-in for GPU time) on
``local[<slots>]`` — one engine slot per task slot — with the real serving filter chain.

    python bench/pool_scale.py                       # 1,000,000 items, 16 slots, P = 128 (about 90 min)
    python bench/pool_scale.py --items 20000 --probe-items 5000 --slots 4   # a quick look

Runs, each in a process of its own so peak memory is its own:

1. the one-stage design at ``--probe-items`` (wall at 100k);
2. the same, killed (SIGKILL to the whole process group) once half the plan's partitions have
   committed, then rerun on the same pool root: what the rerun redoes;
3. the one-stage design at ``--items``;
4. the chunked design this replaced, at ``--items``, on the same items: the driver counts a chunk,
   runs it as its own Spark job of ``slots`` partitions, waits for its slowest task, then starts
   the next (``--chunk-items`` per chunk: ``slots`` x 500, the old default items per task).

Prints one JSON object. Per run: **utilization** = sum of engine busy time / (generate wall x slots)
and the same over the whole job's wall; the Python driver's and the JVM's peak RSS (VmHWM), and the
largest Python worker's; the CPU of the whole process tree (sampled from /proc each second) per item,
in core-ms: with a sleeping engine every CPU second is the job's own overhead.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENGINE = "engine.backend=bench.doubles:LatencyEngine"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, default=1_000_000, help="Items of the full-scale runs.")
    p.add_argument("--probe-items", type=int, default=100_000, help="Items of the probe and kill-rerun runs.")
    p.add_argument("--slots", type=int, default=16, help="Engine slots: local[<slots>].")
    p.add_argument("--partitions", type=int, default=0, help="Plan partitions P (0: 8 x slots).")
    p.add_argument("--chunk-items", type=int, default=0, help="Chunked design: items per chunk (0: slots x 500).")
    p.add_argument("--skip-chunked", action="store_true", help="Leave out the chunked design's run.")
    p.add_argument("--runs", default="probe,kill,full", help="Which runs, comma-separated: probe (one stage at "
                                                            "--probe-items), kill (killed at half, then rerun), "
                                                            "full (one stage and chunked at --items).")
    p.add_argument("--workdir", default="", help="Where the world and pool roots go (default: a new temp dir); "
                                                 "a world already there is reused.")
    p.add_argument("--seed", type=int, default=41)
    # One run, in its own process (the orchestrator starts these).
    p.add_argument("--child", choices=("stage", "chunked"), help=argparse.SUPPRESS)
    p.add_argument("--content", help=argparse.SUPPRESS)
    p.add_argument("--root", help=argparse.SUPPRESS)
    return p


# --------------------------------------------------------------------------- one run (child process)


def chunked_generation(chunk_items: int, partitions_per_chunk: int):
    """The design the one-stage generation replaced, rebuilt from today's parts: chunk after chunk,
    each counted by the driver, then run as its own job and waited for. (Each chunk also pays
    today's plan-id pass over its rows, which the old loop did once: one cheap job per chunk.)"""
    from pyspark.sql import functions as F

    from jobs.arrow_spark import spark_schema
    from jobs.generate import STAGING_SCHEMA, generate_partitions

    def generate(todo, n_todo, serving, filters_cfg, pool, staging_root, run_id):
        n_chunks = max(1, math.ceil(n_todo / chunk_items))
        keyed = todo.withColumn("_chunk", F.pmod(F.xxhash64("content_id"), F.lit(n_chunks)))
        totals = {"plan_id": "chunked", "partitions": 0, "committed_before": 0, "skipped": 0, "generated": 0,
                  "engine_busy_s": 0.0, "engine_restarts": 0, "engine_crash": 0, "wall_s": 0.0, "chunks": n_chunks}
        chunk_pool = replace(pool, partitions=partitions_per_chunk)
        for k in range(n_chunks):
            part = keyed.filter(F.col("_chunk") == k).drop("_chunk")
            n = part.count()
            _, stats = generate_partitions(part, n, serving, filters_cfg, chunk_pool, staging_root / "chunked", run_id)
            for key in ("partitions", "committed_before", "skipped", "generated", "engine_busy_s",
                        "engine_restarts", "engine_crash", "wall_s"):
                totals[key] += stats[key]
        files = sorted(str(p) for p in (staging_root / "chunked").glob("*/p*/data.parquet"))
        staged = todo.sparkSession.read.schema(spark_schema(STAGING_SCHEMA)).parquet(*files) if files else None
        return staged, totals

    return generate


def run_child(args: argparse.Namespace) -> dict:
    import logging

    import jobs.nightly
    from cmaq.config import load_config
    from jobs.spark import get_spark

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    slots, parts = args.slots, args.partitions or 8 * args.slots
    spark = get_spark("cmaq-bench-pool-scale", master=f"local[{slots}]", shuffle_partitions=2 * slots,
                      conf={"spark.driver.memory": "6g"})
    cfg = load_config(None, [ENGINE, f"pool.root={args.root}", f"pool.partitions={parts}",
                             "pool.lease_ttl_s=5"])
    if args.child == "chunked":
        jobs.nightly.generate_partitions = chunked_generation(args.chunk_items or 500 * slots, slots)
    t0, started_at = time.perf_counter(), time.time()
    report = jobs.nightly.build_pool(spark, cfg, args.content)
    wall = time.perf_counter() - t0
    spark.stop()
    return {"status": report.status, "error": report.error, "job_wall_s": round(wall, 1), "started_at": started_at,
            "timings": report.timings,
            "generation": report.generation, "counts": {k: report.counts.get(k) for k in (
                "read", "to_generate", "generated", "skipped_committed", "pool_items", "quarantined")}}


# --------------------------------------------------------------------------- the orchestrator


class TreeSampler:
    """Samples a process tree each second from /proc: CPU seconds and peak RSS per process."""

    def __init__(self, root_pid: int):
        self.root_pid, self.cpu, self.hwm, self.kind = root_pid, {}, {}, {}
        self.timeline: list[tuple[float, float]] = []  # (epoch s, the tree's CPU seconds so far)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _loop(self):
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(1.0)

    def sample(self):
        parents = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    stat = Path(f"/proc/{entry}/stat").read_text()
                except OSError:
                    continue
                fields = stat.rsplit(")", 1)[1].split()
                parents[int(entry)] = (int(fields[1]), int(fields[11]) + int(fields[12]))  # ppid, utime + stime
        for pid, (ppid, ticks) in parents.items():
            if not self._in_tree(pid, parents):
                continue
            self.cpu[pid] = max(self.cpu.get(pid, 0), ticks)
            try:
                status = Path(f"/proc/{pid}/status").read_text()
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
            except OSError:
                continue
            hwm = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")), 0)
            self.hwm[pid] = max(self.hwm.get(pid, 0), hwm)
            self.kind[pid] = ("driver" if pid == self.root_pid else "jvm" if cmd.endswith("java")
                              else "python_worker")
        self.timeline.append((time.time(), sum(self.cpu.values()) / CLK_TCK))

    def cpu_between(self, t0: float, t1: float) -> float:
        """The tree's CPU seconds between two epoch times, from the one-second samples."""
        def at(t):
            before = [c for ts, c in self.timeline if ts <= t]
            return before[-1] if before else 0.0
        return at(t1) - at(t0)

    def cpu_by_phase(self, started_at: float, timings: dict) -> dict:
        """CPU core-seconds per job phase (the job's timings run one after another from ``started_at``);
        ``startup`` is everything before the job (interpreter, Spark), ``shutdown`` after it."""
        out, t = {"startup": self.cpu_between(0, started_at)}, started_at
        for phase, seconds in timings.items():
            out[phase] = self.cpu_between(t, t + seconds)
            t += seconds
        out["shutdown"] = self.cpu_between(t, float("inf"))
        return {k: round(v, 1) for k, v in out.items()}

    def _in_tree(self, pid, parents) -> bool:
        seen = 0
        while pid in parents and seen < 64:
            if pid == self.root_pid:
                return True
            pid, seen = parents[pid][0], seen + 1
        return False

    def figures(self) -> dict:
        def peak(kind):
            return max((self.hwm[p] for p in self.hwm if self.kind.get(p) == kind), default=0) // 1024

        return {"driver_peak_rss_mb": peak("driver"), "jvm_peak_rss_mb": peak("jvm"),
                "python_worker_peak_rss_mb": peak("python_worker"),
                "python_workers_seen": sum(1 for k in self.kind.values() if k == "python_worker"),
                "cpu_core_s": round(sum(self.cpu.values()) / CLK_TCK, 1),
                "cpu_core_s_by_kind": {kind: round(sum(t for p, t in self.cpu.items() if self.kind.get(p) == kind)
                                                   / CLK_TCK, 1) for kind in ("driver", "jvm", "python_worker")}}


def start_child(args, design: str, content: Path, root: Path, log_path: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", design, "--content", str(content),
           "--root", str(root), "--slots", str(args.slots), "--partitions", str(args.partitions),
           "--chunk-items", str(args.chunk_items)]
    return subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=open(log_path, "w"),
                            text=True, start_new_session=True)


def measured(args, design: str, content: Path, root: Path, items: int, log_path: Path,
             kill_at: float | None = None) -> dict:
    """One child run with its process tree sampled; ``kill_at``: SIGKILL the tree once that share of
    the plan's partitions committed."""
    parts = args.partitions or 8 * args.slots
    proc = start_child(args, design, content, root, log_path)
    with TreeSampler(proc.pid) as sampler:
        if kill_at is not None:
            while proc.poll() is None and len(list(root.glob("staging/*/p*/_COMMITTED"))) < kill_at * parts:
                time.sleep(0.5)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            out = {"status": "killed", "committed_at_kill": len(list(root.glob("staging/*/p*/_COMMITTED")))}
        else:
            stdout, _ = proc.communicate()
            if proc.returncode != 0:
                raise RuntimeError(f"{design} run failed (exit {proc.returncode}); see {log_path}")
            out = json.loads(stdout.strip().splitlines()[-1])
    out.update(sampler.figures(), design=design, items=items, slots=args.slots)
    gen = out.get("generation")
    if "started_at" in out:
        out["cpu_core_s_by_phase"] = sampler.cpu_by_phase(out.pop("started_at"), out["timings"])
    if gen:
        gen_wall = out["timings"]["generate"]
        out["utilization_generate"] = round(gen["engine_busy_s"] / (gen_wall * args.slots), 3)
        out["utilization_job"] = round(gen["engine_busy_s"] / (out["job_wall_s"] * args.slots), 3)
        out["overhead_core_ms_per_item"] = round(1000 * out["cpu_core_s"] / items, 2)
    return out


def world_content(args, workdir: Path) -> tuple[Path, Path]:
    """The world's content (generated once per workdir) and its first ``probe_items`` rows."""
    import pyarrow.parquet as pq

    from cmaq.config import WorldConfig
    from cmaq.world.generate import generate_world

    world = workdir / f"world-{args.items}-{args.seed}"
    if not (world / "world.json").exists():
        t0 = time.perf_counter()
        generate_world(WorldConfig(seed=args.seed, items=args.items), world, workers=2)
        print(f"[bench] world of {args.items} items in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    probe = workdir / f"probe-{args.probe_items}.parquet"
    if not probe.exists():
        pq.write_table(pq.read_table(world / "content").slice(0, args.probe_items), probe)
    return world / "content", probe


def engine_bound_s(content: Path, slots: int) -> float:
    """The wall a perfect scheduler would need: the items' latencies spread evenly over the slots."""
    import pyarrow.parquet as pq

    from bench.doubles import item_latency_s

    ids = pq.read_table(content, columns=["content_id"])["content_id"].to_pylist()
    return round(sum(item_latency_s(i) for i in ids) / slots, 1)


def main(args: argparse.Namespace) -> dict:
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="cmaq-bench-scale-"))
    workdir.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    full, probe = world_content(args, workdir)
    results = {"bench": "pool_scale", "items": args.items, "probe_items": args.probe_items, "slots": args.slots,
               "partitions": args.partitions or 8 * args.slots, "cores": os.cpu_count(),
               "latency": {"median_ms": 20, "p99_over_median": round(math.exp(2.326), 1)}, "runs": {}}

    def record(name, value):
        results["runs"][name] = value
        (workdir / "results.json").write_text(json.dumps(results, indent=2))
        print(f"[bench] {name}: {json.dumps(value)[:400]}", file=sys.stderr)

    runs = set(args.runs.split(","))
    if runs - {"probe", "kill", "full"}:
        raise SystemExit(f"--runs: unknown run(s) {sorted(runs - {'probe', 'kill', 'full'})}")
    if "probe" in runs:
        record("stage_probe", {**measured(args, "stage", probe, workdir / "pool-probe", args.probe_items,
                                          workdir / "stage_probe.log"),
                               "engine_bound_wall_s": engine_bound_s(probe, args.slots)})
    if "kill" in runs:
        record("kill_at_half_then_rerun", killed_then_rerun(args, probe, workdir))
    if "full" in runs:
        for name, design in [("stage_full", "stage")] + ([] if args.skip_chunked else [("chunked_full", "chunked")]):
            record(name, {**measured(args, design, full, workdir / f"pool-{name}", args.items,
                                     workdir / f"{name}.log"), "engine_bound_wall_s": engine_bound_s(full, args.slots)})
    results["bench_wall_s"] = round(time.perf_counter() - t_all, 1)
    (workdir / "results.json").write_text(json.dumps(results, indent=2))
    return results


def killed_then_rerun(args, probe: Path, workdir: Path) -> dict:
    kill_root = workdir / "pool-kill"
    killed = measured(args, "stage", probe, kill_root, args.probe_items, workdir / "killed.log", kill_at=0.5)
    time.sleep(6)  # the killed run's lease (pool.lease_ttl_s = 5) expires
    rerun = measured(args, "stage", probe, kill_root, args.probe_items, workdir / "rerun.log")
    gen, counts = rerun["generation"], rerun["counts"]
    return {
        "killed": killed, "rerun": rerun, "partitions_committed_before": gen["committed_before"],
        "partitions_redone": gen["partitions"] - gen["committed_before"], "items_skipped": counts["skipped_committed"],
        "items_redone": counts["generated"], "redone_share": round(counts["generated"] / args.probe_items, 3)}


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))  # bench.doubles, as the Spark workers import it
    parsed = make_parser().parse_args()
    if parsed.child:
        print(json.dumps(run_child(parsed), default=str))
    else:
        print(json.dumps(main(parsed)))
