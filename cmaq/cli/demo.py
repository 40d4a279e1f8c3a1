"""`make demo`: the loop from training to the cache, end to end on embedded defaults.

    world ─► training data (Spark) ─► reward models (expansion, CTR) ─► QSA ─► a short CMAQ run
        ─► the nightly with two A/B arms, ``qsa`` and ``cmaq`` (vLLM engine, adapters merged into the base)
        ─► Parquet, the SQLite cache and the catalog's ``cmaq.cmaq_*_current`` views
        ─► ``sql/arm_comparison.sql`` ─► a simulated A/B of the two arms through the cache, scored by the
           world's oracle ─► three notes with both arms' served queries

The training chain is ``cmaq reproduce``'s (:class:`cmaq.cli.reproduce.Reproduction`) at the ``demo``
profile's sizes. Its outputs (world, data, models) are cached under the model cache (``CMAQ_CACHE``) by
a content hash of the settings, the training code and the base model, so a second demo skips training;
``<out>/training`` links to them. The nightly serves held-out notes of the same world.

The oracle is reached only by the demo's report (this entry point): the nightly never sees it. Output
of the libraries underneath (Spark, vLLM, transformers, warnings) goes to ``<out>/third_party.log``; the
console gets the demo's own lines and the progress of its long steps.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import sys
import time
from contextlib import contextmanager, suppress
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cmaq.cli.reproduce import Reproduction, profile_config
from cmaq.cli.world import format_summary
from cmaq.config import CmaqConfig, ConfigError, to_dict, with_values
from cmaq.engines.tiny import DEFAULT_CACHE
from cmaq.pool.reader import Reader
from cmaq.pool.sinks import redact_url
from cmaq.world.oracle import Oracle, oracle_code_hash
from jobs.catalog import catalog_session
from jobs.nightly import build_pool
from jobs.sql import run_sql
from training.evaluate.offline import load_test_items
from training.evaluate.pool_ab import shown_queries, simulate_pool_ab

REPO = Path(__file__).resolve().parents[2]
#: What the trained models depend on besides their settings (a change here retrains them): the code the
#: chain runs, the committed model and data files; not the serving job, the pool or the evaluation.
TRAINING_SOURCES = ("cmaq", "training", "filters", "jobs/data", "jobs/contract.py", "jobs/spark.py",
                    "jobs/arrow_spark.py")
NOT_TRAINING = ("cmaq/pool", "cmaq/cli", "training/evaluate")
TRAINING_CLI = ("cmaq/cli/reproduce.py",)  # the chain's wiring
#: Settings that change how the models are served, not what is trained.
SERVING_ONLY = {"engine": ("adapter_mode", "merge_cache", "max_loras", "max_lora_rank", "tensor_parallel_size",
                           "gpu_memory_utilization")}
TRAINING_REPRODUCE = ("rm_factory", "seeds", "headline_alpha", "backbone_layers", "backbone_hidden")
#: The project's loggers whose INFO lines are progress worth a console line (the rest go to the log file).
PROGRESS_LOGGERS = ("training", "jobs.generate", "jobs.catalog", "cmaq.engines.tiny")
ARMS = ("qsa", "cmaq")


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cmaq.cli.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="demo_out", help="Directory for everything the demo writes (its pool, the "
                                                     "third-party log, a link to the cached training run).")
    p.add_argument("--config", default=None, help="Optional TOML configuration file (below the demo profile's "
                                                  "settings, above the defaults).")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="Configuration override; repeatable (training settings change the cache key).")
    p.add_argument("--pool-items", type=int, default=60,
                   help="Held-out notes the nightly serves, in each arm (on 2 cores, vLLM's CPU build serves "
                        "about 0.6 a second per arm after a minute or two of start-up).")
    p.add_argument("--users", type=int, default=400, help="Simulated users of the A/B; each views every note.")
    return p


# --------------------------------------------------------------------------- console and log


class Console:
    """The demo's own lines (to the terminal) and its seconds per step (one breakdown at the end)."""

    def __init__(self, stream) -> None:
        self.stream, self.seconds = stream, {}

    def say(self, text: str = "") -> None:
        print(text, file=self.stream, flush=True)

    @contextmanager
    def step(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0

    def breakdown(self) -> str:
        total = sum(self.seconds.values())
        parts = ", ".join(f"{name} {s:.0f} s" for name, s in self.seconds.items())
        return f"[demo] time by step: {parts} (total {total:.0f} s)"


@contextmanager
def third_party_to(log_path: Path):
    """Everything written to file descriptors 1 and 2 — by this process and the ones it starts (the
    JVM, Spark's Python workers, vLLM's engine process) — goes to ``log_path``; Python warnings and
    log records too. Yields a :class:`Console` on the terminal's stdout; the project's progress lines
    (:data:`PROGRESS_LOGGERS`) go there as well. Progress bars turn themselves off (no terminal)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_file = open(log_path, "a", buffering=1, encoding="utf-8")
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    terminal = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    root, loggers = logging.getLogger(), [logging.getLogger(name) for name in PROGRESS_LOGGERS]
    to_file = logging.StreamHandler(log_file)
    to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    progress = logging.StreamHandler(terminal)
    progress.setFormatter(logging.Formatter("[demo]   %(message)s"))
    levels = [root.level, *(lg.level for lg in loggers)]
    # vLLM then leaves its loggers to the root logger (here: the log file) instead of stdout
    env = {"VLLM_CONFIGURE_LOGGING": os.environ.get("VLLM_CONFIGURE_LOGGING")}
    os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")
    streams = sys.stdout, sys.stderr
    try:
        os.dup2(log_file.fileno(), 1)
        os.dup2(log_file.fileno(), 2)
        sys.stdout = sys.stderr = log_file  # whatever replaced the standard streams (a test's capture) too
        root.addHandler(to_file)
        root.setLevel(logging.INFO)
        for lg in loggers:
            lg.addHandler(progress)
            lg.setLevel(logging.INFO)
        logging.captureWarnings(True)
        yield Console(terminal)
    finally:
        with suppress(OSError, ValueError):
            sys.stdout.flush()
            sys.stderr.flush()
        sys.stdout, sys.stderr = streams
        try:  # the terminal first, whatever else fails
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
        finally:
            for fd in saved:
                os.close(fd)
            logging.captureWarnings(False)
            root.removeHandler(to_file)
            for lg, level in zip([root, *loggers], levels):
                lg.removeHandler(progress)
                lg.setLevel(level)
            for name, value in env.items():
                if value is None:
                    os.environ.pop(name, None)
            terminal.close()
            log_file.close()


# --------------------------------------------------------------------------- training (cached)


def training_files() -> list[Path]:
    files = []
    for top in TRAINING_SOURCES:
        root = REPO / top
        for path in sorted(root.rglob("*")) if root.is_dir() else [root]:
            rel = path.relative_to(REPO).as_posix()
            if (path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
                    and (not rel.startswith(NOT_TRAINING) or rel in TRAINING_CLI)):
                files.append(path)
    return files


def training_key(cfg: CmaqConfig) -> str:
    """Content hash of what the trained models depend on: the settings (less the pool's, the serving-only
    engine ones and the reproduction's paths and report), the training code and the committed model and
    data files."""
    settings = {k: v for k, v in to_dict(cfg).items() if k != "pool"}
    for section, keys in SERVING_ONLY.items():
        settings[section] = {k: v for k, v in settings[section].items() if k not in keys}
    settings["reproduce"] = {k: settings["reproduce"][k] for k in TRAINING_REPRODUCE}
    h = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for path in training_files():
        h.update(path.relative_to(REPO).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def train_chain(chain: Reproduction, console: Console, steps: tuple[str, ...]) -> None:
    """Steps of the chain (world → data → reward models → QSA → CMAQ), each skipped when its output is
    complete."""
    cfg = chain.cfg
    every = {"world": chain.make_world, "data": chain.make_data, "reward models": chain.train_reward_models,
             "qsa": chain.train_qsa,
             "cmaq": lambda: chain.train_cmaq(cfg.reproduce.seeds[0], cfg.reproduce.headline_alpha)}
    for name in steps:
        with console.step(name):
            every[name]()


# --------------------------------------------------------------------------- serving


def serving_notes(chain: Reproduction, n_items: int, out: Path) -> tuple[Path, list[dict]]:
    """The first ``n_items`` held-out notes of the training world: a content table for the nightly and
    their rows for the report."""
    items = load_test_items(str(chain.world), str(chain.data / "test_contents"), n_items)
    table = pq.read_table(chain.world / "content")
    ids = pa.array([it["content_id"] for it in items], table.schema.field("content_id").type)
    table = table.filter(pc.is_in(table["content_id"], value_set=ids))
    path = out / "content_sample.parquet"
    pq.write_table(table, path)
    return path, items


def arm_settings(chain: Reproduction, pool_root: Path, n_items: int) -> dict:
    """The nightly's settings: two arms at half the traffic each, adapters merged into the base."""
    cmaq_adapter = chain.cmaq_dir(chain.cfg.reproduce.seeds[0], chain.cfg.reproduce.headline_alpha) / "adapter"
    # Four partitions per arm, so every Spark slot runs an engine: on 2 cores two engines side by side
    # served 120 notes in 193 s, one engine with both cores in 239 s.
    return {"pool.root": str(pool_root), "pool.items_per_partition": max(1, n_items // 4),
            "pool.arms.qsa.adapter": str(chain.out / "qsa" / "adapter"), "pool.arms.qsa.weight": 0.5,
            "pool.arms.cmaq.adapter": str(cmaq_adapter), "pool.arms.cmaq.weight": 0.5,
            # one model per arm on the CPU build: LoRA per request costs ~5x the bare model's time
            "engine.adapter_mode": "merged"}


def run_nightly(spark, cfg: CmaqConfig, content: Path, console: Console):
    report = build_pool(spark, cfg, str(content))
    console.say(f"[demo] nightly: {report.status} (exit {report.exit_code}); counts per arm:")
    for arm, counts in (report.counts.get("arms") or {}).items():
        console.say(f"    {arm:5s} " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return report


# --------------------------------------------------------------------------- report


def show_arm_comparison(spark, pool_root: Path, catalog_db: str, console: Console) -> None:
    console.say("[demo] sql/arm_comparison.sql:")
    table = run_sql(spark, REPO / "sql" / "arm_comparison.sql", pool_root).toPandas()
    console.say(table.to_string(index=False))
    rows = spark.sql(f"SELECT arm, count(DISTINCT content_id) AS items FROM `{catalog_db}`.cmaq_pool_current GROUP BY arm "
                     "ORDER BY arm").collect()
    console.say(f"[demo] catalog view {catalog_db}.cmaq_pool_current (any Spark SQL client on this metastore): "
                + ", ".join(f"{r['arm']} {r['items']} items" for r in rows))


def show_ab(reader: Reader, items: list[dict], users: int, console: Console) -> pd.DataFrame:
    ab = simulate_pool_ab(reader, items, Oracle(), users=users, seed=0)
    split = reader.split()
    console.say(f"[demo] simulated A/B through the cache: {users} users split "
                + " / ".join(f"{a} {w:g}" for a, w in sorted(split.weights.items()))
                + f" (salt {split.salt!r}), each viewing the {len(items)} notes; truth from the world's oracle "
                  f"(code hash {oracle_code_hash()}):")
    console.say(ab.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    by_arm = ab.set_index("arm")
    if {"qsa", "cmaq"} <= set(by_arm.index) and by_arm.loc["qsa", "true_ctr"] > 0:
        delta = by_arm.loc["cmaq", "true_ctr"] / by_arm.loc["qsa", "true_ctr"] - 1
        console.say(f"[demo] true CTR per impression, cmaq vs qsa: {delta:+.1%}")
    return ab


def show_notes(reader: Reader, items: list[dict], console: Console, n: int = 3) -> None:
    """Three notes both arms serve (the first ones; fewer if fewer are served by both)."""
    shown = shown_queries(reader, items, ARMS)
    both = [i for i in range(len(items)) if all(shown[a][i] for a in ARMS)][:n]
    for i in both:
        it = items[i]
        body = it["body"].replace("\n", " ")
        console.say(f"[demo] note {it['content_id']} ({it['lang']}, {it['category']}): {it['title']}")
        console.say(f"    {body[:200] + '…' if len(body) > 200 else body}")
        for arm in ARMS:
            queries = [q["query"] for q in reader.get(str(it["content_id"]), arm=arm).queries]
            console.say(f"    {arm:5s} " + " | ".join(queries))


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    out = Path(args.out).resolve()
    try:
        if args.pool_items < 1 or args.users < 1:
            raise ValueError("--pool-items and --users must be at least 1")
        cfg = profile_config("demo", args.config, tuple(args.overrides))
        if cfg.reproduce.backbone_layers:
            raise ValueError("reproduce.backbone_layers: the demo trains and serves the task model, not a "
                             "random backbone (use cmaq reproduce --profile gpu)")
        key = training_key(cfg)
        cfg = with_values(cfg, {"reproduce.out": str((DEFAULT_CACHE / "demo" / key).resolve())})
    except (ConfigError, ValueError) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    pool_root = out / "pool"
    shutil.rmtree(pool_root, ignore_errors=True)  # the demo's own pool (and its metastore) from a previous run
    log_path = out / "third_party.log"
    with third_party_to(log_path) as console:
        try:
            code = run_demo(cfg, key, out, pool_root, args, console)
        except Exception as exc:  # the traceback goes to the log; the console gets one line
            logging.getLogger("cmaq.demo").exception("the demo failed")
            console.say(f"[demo] failed: {type(exc).__name__}: {exc} (traceback in {log_path})")
            code = 1
        console.say(console.breakdown())
        console.say(f"[demo] done (exit {code}). Everything is under {out}; third-party output in {log_path}")
    return code


def link_training(out: Path, target: str) -> None:
    """``<out>/training`` -> the cached training run."""
    link = out / "training"
    if link.is_symlink() or link.is_file():
        link.unlink()
    elif link.exists():
        shutil.rmtree(link)
    link.symlink_to(target, target_is_directory=True)


def run_demo(cfg: CmaqConfig, key: str, out: Path, pool_root: Path, args, console: Console) -> int:
    done = Path(cfg.reproduce.out) / "DONE"
    console.say(f"[demo] training chain (demo profile), cached by content hash {key} in {cfg.reproduce.out}"
                + (": trained earlier, every step is skipped" if done.exists() else
                   ": world, data, reward models, QSA, CMAQ (about 8 minutes the first time)"))
    link_training(out, cfg.reproduce.out)
    with console.step("spark start"):
        spark = catalog_session("cmaq-demo", with_values(cfg, {"pool.root": str(pool_root)}).pool)
    try:
        chain = Reproduction(cfg, spark=spark, progress=console.say, tag="demo")
        chain.out.mkdir(parents=True, exist_ok=True)
        (chain.out / "config.json").write_text(json.dumps(to_dict(cfg), indent=1))
        train_chain(chain, console, ("world", "data"))
        world = json.loads((chain.world / "world.json").read_text("utf-8"))
        console.say(format_summary(str(chain.world), world))
        content, items = serving_notes(chain, args.pool_items, out)  # too few held-out notes: fails before training
        train_chain(chain, console, ("reward models", "qsa", "cmaq"))
        done.write_text("ok\n")
        return serve_and_report(spark, chain, content, items, pool_root, args.users, console)
    finally:
        spark.stop()


def serve_and_report(spark, chain: Reproduction, content: Path, items: list[dict], pool_root: Path, users: int,
                     console: Console) -> int:
    serving_cfg = with_values(chain.cfg, arm_settings(chain, pool_root, len(items)))
    console.say(f"[demo] nightly over {len(items)} held-out notes x arms {', '.join(ARMS)} (Spark local mode, "
                f"vLLM engine, adapters merged into the base; the first run merges and caches them)")
    with console.step("nightly"):
        report = run_nightly(spark, serving_cfg, content, console)
    if report.exit_code != 0:
        console.say(f"[demo] the nightly failed: {report.error or report.status}; see {pool_root}/runs/"
                    f"{report.run_id}.json")
        return report.exit_code
    reader = Reader(serving_cfg.pool.kv(), serving_cfg.pool.kv_prefix)
    with console.step("report"):
        show_arm_comparison(spark, pool_root, serving_cfg.pool.catalog_db, console)
        show_ab(reader, items, users, console)
        show_notes(reader, items, console)
    console.say(f"[demo] pool version {report.run_id}: {pool_root}/versions/{report.run_id}/, cache "
                f"{redact_url(serving_cfg.pool.kv())} (cmaq pool get ID --arm qsa), run manifest "
                f"{pool_root}/runs/{report.run_id}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
