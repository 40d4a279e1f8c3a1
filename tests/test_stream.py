"""Nearline as a stream (jobs/stream.py) on Spark local mode with the planting engine double: a
micro-batch refresh with takedowns and bad input, exactly once across a SIGKILL, and a nightly
published while the stream runs."""
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from cmaq.cli import main as cli
from cmaq.config import load_config
from cmaq.pool.reader import Reader
from jobs.entry import EXIT_BAD_INPUT, EXIT_OK
from jobs.nightly import build_pool
from jobs.pool_tables import version_frames
from jobs.stream import one_process_lock, run_stream, trim_carry

from conftest import REPO, command_json
from processes import kill_tree

DOUBLE = "engine.backend=tests.doubles.engines:PlantingEngine"
pytestmark = pytest.mark.usefixtures("importable_doubles")


def _opts(root: Path) -> list[str]:
    return [DOUBLE, f"pool.root={root}", "pool.catalog=none", "stream.max_files_per_trigger=1",
            "stream.trigger_s=1", "stream.intake_poll_s=0.2"]


@pytest.fixture(scope="module")
def stream_world(spark, small_world, tmp_path_factory):
    """A published nightly over 80 notes (the base every test copies), the other notes for the stream."""
    content = pq.read_table(small_world / "content").to_pandas()
    base_dir = tmp_path_factory.mktemp("stream-base")
    table = base_dir / "content.parquet"
    content.iloc[:80].to_parquet(table, index=False)
    report = build_pool(spark, load_config(None, _opts(base_dir / "pool")), str(table))
    assert report.exit_code == EXIT_OK, report.error
    return {"root": base_dir / "pool", "content": content, "table": table, "version": report.run_id}


def _copy_pool(stream_world, to: Path) -> Path:
    shutil.copytree(stream_world["root"], to)
    return to


def _drop(root: Path, name: str, frame: pd.DataFrame | None = None, lines: list[dict] | None = None) -> None:
    """A producer following the convention: a hidden temporary name, then a rename into place."""
    drop = root / "stream" / "drop"
    drop.mkdir(parents=True, exist_ok=True)
    tmp = drop / f"_{name}.tmp"
    if frame is not None:
        frame.to_parquet(tmp, index=False)
    else:
        tmp.write_text("".join(json.dumps(line) + "\n" for line in lines))
    os.replace(tmp, drop / name)


def _notes(content: pd.DataFrame, start: int, n: int) -> pd.DataFrame:
    out = content.iloc[start:start + n].copy()
    out["updated_at"] = pd.Timestamp("2030-01-01", tz="UTC")
    return out


def _cache(root: Path) -> dict:
    """Every cache value of the current version: content id -> the encoded queries."""
    version = (root / "current").read_text().strip()
    with sqlite3.connect(root / "kv.db") as con:
        return dict(con.execute("SELECT content_id, value FROM kv WHERE version = ?", (version,)).fetchall())


def _parquet(spark, root: Path) -> dict:
    """The current version's rows as readers see them, without the per-run provenance columns."""
    vdir = root / "versions" / (root / "current").read_text().strip()
    frames = version_frames(spark, vdir)
    out = {}
    for name, df in frames.items():
        cols = [c for c in df.columns if c not in ("run_id", "generated_at")]
        out[name] = df.select(*cols).toPandas().sort_values(cols).reset_index(drop=True)
    return out


def _lease_holder(root: Path) -> str:
    """Who holds the pool's writer lease ("" when free), peeked at in the embedded cache."""
    with sqlite3.connect(root / "kv.db") as con:
        row = con.execute("SELECT value FROM meta WHERE key = 'cmaq:lease:writer'").fetchone()
    return json.loads(row[0])[0] if row and json.loads(row[0])[1] > time.time() else ""


def _batches(root: Path) -> list[dict]:
    path = root / "stream" / "batches.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _stream(root: Path, env: dict | None = None, once: bool = True) -> subprocess.Popen:
    cmd = [sys.executable, str(REPO / "jobs" / "stream.py"), *(["--once"] if once else []),
           *sum((["--set", o] for o in _opts(root)), [])]
    return subprocess.Popen(cmd, cwd=REPO, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def test_bad_configuration_exits_2_before_anything_runs(spark, stream_world, tmp_path, capsys):
    assert run_stream(spark, load_config(None, _opts(tmp_path / "empty")), once=True) == EXIT_BAD_INPUT
    assert "nothing published yet" in capsys.readouterr().err
    root = _copy_pool(stream_world, tmp_path / "pool")
    assert run_stream(spark, load_config(None, [*_opts(root), "filters.lexical.max_words=9"]), once=True) == \
        EXIT_BAD_INPUT
    assert "run the nightly" in capsys.readouterr().err
    stream_dir = load_config(None, _opts(root)).stream.root(str(root))
    stream_dir.mkdir()
    held = one_process_lock(stream_dir)  # a stream already running over this directory
    try:
        assert run_stream(spark, load_config(None, _opts(root)), once=True) == EXIT_BAD_INPUT
        assert "another stream is running" in capsys.readouterr().err
    finally:
        held.close()
    assert not (root / "stream" / "checkpoint").exists()


def test_the_carry_set_keeps_what_the_nightly_could_not_have_read(spark):
    snapshot = pd.Timestamp("2030-01-01", tz="UTC")
    carry = spark.createDataFrame(pd.DataFrame({
        "content_id": ["never-in-table", "older", "newer", "gone", "taken-down-later"],
        "updated_at": [snapshot - pd.Timedelta(days=1), snapshot - pd.Timedelta(hours=1),
                       snapshot + pd.Timedelta(hours=1), snapshot + pd.Timedelta(hours=1),
                       snapshot + pd.Timedelta(hours=2)],
        "deleted": [False, False, False, True, True]}))
    base_ids = spark.createDataFrame(pd.DataFrame({"content_id": ["older", "newer", "taken-down-later", "other"]}))
    kept = trim_carry(carry, base_ids, int(snapshot.timestamp() * 1000))
    assert sorted(r.content_id for r in kept.collect()) == ["never-in-table", "newer", "taken-down-later"]
    assert kept.columns == carry.columns
    # a version without the figure keeps every note the nightly holds too
    assert trim_carry(carry, base_ids, None).count() == 4


def test_a_micro_batch_refreshes_the_version_and_bad_input_is_set_aside(spark, stream_world, tmp_path):
    # a parent folder named "deltas": a delta's id is read from the end of each file's path
    root = _copy_pool(stream_world, tmp_path / "deltas" / "pool")
    content, version = stream_world["content"], stream_world["version"]
    served_before = _parquet(spark, root)["pool"]
    victim = served_before.content_id.iloc[0]
    changed = served_before.content_id.iloc[-1]
    changed_row = content[content.content_id == changed].copy()
    changed_row["shop_name"], changed_row["updated_at"] = "Harbour Lights Bistro", pd.Timestamp("2030-01-02", tz="UTC")
    _drop(root, "a.parquet", frame=pd.concat([_notes(content, 100, 6), changed_row]))
    _drop(root, "b.jsonl", lines=[{"content_id": victim, "deleted": True},
                                  {"content_id": None, "title": "no id", "body": "x"},
                                  {"content_id": "late-1", "title": "t", "body": "b", "updated_at": "not a date"}])
    _drop(root, "broken.jsonl", lines=[])
    (root / "stream" / "drop" / "broken.jsonl").write_text('{"content_id": "z"}\n{"content_id": \n')
    (root / "stream" / "drop" / "_half.parquet").write_bytes(b"PAR1 half written")

    cfg = load_config(None, [*_opts(root), "stream.max_files_per_trigger=5"])
    assert run_stream(spark, cfg, once=True) == EXIT_OK
    (batch,) = _batches(root)
    assert batch["status"] == "refreshed" and batch["version"] == version and batch["files"] == 2
    assert batch["counts"]["new"] == 6 and batch["counts"]["changed"] == 1 and batch["counts"]["takedowns"] == 1
    assert batch["rejected"] == {"null_content_id": 1, "bad_updated_at": 1}
    assert batch["latency_s"]["max"] > 0

    reader = Reader(cfg.pool.kv(), cfg.pool.kv_prefix)
    served = _parquet(spark, root)
    for cid in [*content.content_id.iloc[100:106], changed]:
        hit = reader.get(cid)
        rows = served["pool"][served["pool"].content_id == cid].sort_values("rank")
        assert hit.hit and hit.version == version and [q["query"] for q in hit.queries] == rows["query"].tolist()
    assert served["pool"][served["pool"].content_id == changed]["query"].str.contains("Harbour Lights").any()
    # the takedown: out of the cache, its queries dropped as purged
    assert not reader.get(victim).hit and victim not in set(served["pool"].content_id)
    assert (served["dropped"][served["dropped"].content_id == victim].reason == "purged").any()
    assert not served["pool"].duplicated(["content_id", "query"]).any()
    # bad input: the file quarantined with its reason, bad rows set aside, the half-written file unread
    reason = json.loads(next((root / "stream" / "quarantine").glob("*broken.jsonl.reason.json")).read_text())
    assert reason["file"] == "broken.jsonl" and "line 2: not valid JSON" in reason["reason"]
    rows = pd.read_parquet(next((root / "stream" / "quarantine" / "rows").iterdir()))
    assert sorted(rows.reason) == ["bad_updated_at", "null_content_id"]
    assert (root / "stream" / "drop" / "_half.parquet").exists()
    # status, as the command prints it
    status = CliRunner().invoke(cli, [*sum((["--set", o] for o in _opts(root)), []), "pool", "status"])
    assert status.exit_code == 0, status.output
    shown = command_json(status.output)
    assert shown["totals"]["batches"] == 1 and shown["last_batch"]["batch_id"] == 0
    # nothing new: a second run publishes nothing
    deltas = sorted(p.name for p in (root / "versions" / version / "deltas").iterdir())
    assert run_stream(spark, cfg, once=True) == EXIT_OK
    assert sorted(p.name for p in (root / "versions" / version / "deltas").iterdir()) == deltas


def test_killed_mid_batch_the_restarted_stream_equals_an_uninterrupted_one(spark, stream_world, tmp_path):
    content = stream_world["content"]
    served = _parquet(spark, stream_world["root"])["pool"].content_id
    roots = {k: _copy_pool(stream_world, tmp_path / k) for k in ("clean", "after_publish", "mid_generation")}
    for root in roots.values():
        _drop(root, "1.parquet", frame=_notes(content, 200, 8))
        _drop(root, "2.jsonl", lines=[*(dict(r, updated_at="2030-01-03T00:00:00Z") for r in
                                        _notes(content, 210, 4)[["content_id", "title", "body"]].to_dict("records")),
                                      {"content_id": served.iloc[3], "deleted": True}])

    assert run_stream(spark, load_config(None, _opts(roots["clean"])), once=True) == EXIT_OK

    # killed after batch 0's delta and cache keys are in, before the checkpoint records the batch
    root = roots["after_publish"]
    killed = _stream(root, {"CMAQ_FAULT_INJECTION": "stream_killed_after_publish"})
    out, _ = killed.communicate(timeout=300)
    kill_tree(killed)
    assert killed.returncode == -signal.SIGKILL, out[-3000:]
    assert not (root / "stream" / "checkpoint" / "commits" / "0").exists()
    again = _stream(root)
    out, _ = again.communicate(timeout=300)
    assert again.returncode == 0, out[-3000:]
    assert [b["status"] for b in _batches(root)] == ["replayed", "refreshed"]

    # killed while batch 0 generates
    root = roots["mid_generation"]
    killed = _stream(root, {"CMAQ_TEST_ENGINE_DELAY": "3"})
    deadline = time.time() + 240
    while time.time() < deadline and killed.poll() is None and not list(root.glob("staging/stream/*")):
        time.sleep(0.1)
    assert killed.poll() is None, "the stream ended before it generated"
    kill_tree(killed)
    assert not _batches(root)
    again = _stream(root)
    out, _ = again.communicate(timeout=300)
    assert again.returncode == 0, out[-3000:]

    clean_cache, clean_rows = _cache(roots["clean"]), _parquet(spark, roots["clean"])
    notes = {*content.content_id.iloc[200:208], *content.content_id.iloc[210:214]}
    assert notes <= {c for table in clean_rows.values() for c in table.content_id}
    assert set(clean_cache) == set(clean_rows["pool"].content_id) and served.iloc[3] not in clean_cache
    assert not clean_rows["pool"].duplicated(["content_id", "rank"]).any()
    for name in ("after_publish", "mid_generation"):
        assert _cache(roots[name]) == clean_cache, name
        rows = _parquet(spark, roots[name])
        for table in clean_rows:
            pd.testing.assert_frame_equal(rows[table], clean_rows[table], obj=f"{name} {table}")


def test_a_nightly_published_while_the_stream_runs(spark, stream_world, tmp_path):
    """The stream waits while the nightly holds the lease, then publishes into the new version what
    it had published into the old one (the nightly's table never held those notes) and what arrived
    meanwhile."""
    root = _copy_pool(stream_world, tmp_path / "pool")
    content, old_version = stream_world["content"], stream_world["version"]
    cfg = load_config(None, _opts(root))
    reader = Reader(cfg.pool.kv(), cfg.pool.kv_prefix)
    stream = _stream(root, once=False)
    try:
        _drop(root, "before.parquet", frame=_notes(content, 300, 5))
        deadline = time.time() + 240
        while time.time() < deadline and not _batches(root):
            assert stream.poll() is None, stream.stdout.read()[-3000:]
            time.sleep(0.2)
        before = _parquet(spark, root)
        assert {*content.content_id.iloc[300:305]} <= {c for t in before.values() for c in t.content_id}

        # The nightly's table: the base notes and ten more, none of the stream's.
        nightly_table = tmp_path / "nightly.parquet"
        content.iloc[:90].to_parquet(nightly_table, index=False)
        nightly = subprocess.Popen(
            [sys.executable, str(REPO / "jobs" / "nightly.py"), "--content", str(nightly_table),
             *sum((["--set", o] for o in [*_opts(root), "pool.engine_batch=2"]), [])],
            cwd=REPO, env={**os.environ, "CMAQ_TEST_ENGINE_DELAY": "1"}, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, start_new_session=True)
        while nightly.poll() is None and "nightly" not in _lease_holder(root):
            time.sleep(0.1)
        during = _notes(content, 310, 4)[["content_id", "title", "body"]].to_dict("records")
        _drop(root, "during.jsonl", lines=[dict(r, updated_at="2030-01-03T00:00:00Z") for r in during])
        status, waited = root / "stream" / "status.json", False
        while nightly.poll() is None:
            waiting = json.loads(status.read_text()).get("waiting_for_lease") if status.exists() else None
            waited |= "nightly" in (waiting or "")
            time.sleep(0.2)
        out, _ = nightly.communicate()
        assert nightly.returncode == 0, out[-3000:]
        new_version = (root / "current").read_text().strip()
        assert new_version != old_version
        deadline = time.time() + 240
        while time.time() < deadline and not any(b["handover"] for b in _batches(root)):
            assert stream.poll() is None, stream.stdout.read()[-3000:]
            time.sleep(0.2)
        # a nightly published while nothing arrives: the carry set goes into it without waiting for a file
        later = build_pool(spark, load_config(None, _opts(root)), str(nightly_table))
        assert later.exit_code == EXIT_OK, later.error
        deadline = time.time() + 120
        while time.time() < deadline and len([b for b in _batches(root) if b["handover"]]) < 2:
            assert stream.poll() is None, stream.stdout.read()[-3000:]
            time.sleep(0.2)
    finally:
        stream.send_signal(signal.SIGTERM)
        try:
            out, _ = stream.communicate(timeout=120)
        finally:
            kill_tree(stream)
    assert stream.returncode == 0, out[-3000:]
    assert waited, "the stream never reported waiting for the nightly's lease"
    handover = [b for b in _batches(root) if b["handover"]]
    assert handover[0]["handover"] == {"from": old_version, "to": new_version, "carried_rows": 5}
    assert handover[0]["lease_wait_s"] > 0 and handover[0]["files"] == 1
    # the second hand-over, by the driver between batches: both files' notes, none from the table
    assert handover[1]["batch_id"] == -1 and handover[1]["handover"]["to"] == later.run_id
    assert handover[1]["handover"]["carried_rows"] == 9
    new_version = later.run_id
    # every note of both files is in the new version, and the cache serves exactly its pool
    notes = {*content.content_id.iloc[300:305], *content.content_id.iloc[310:314]}
    after = _parquet(spark, root)
    assert notes <= {c for t in after.values() for c in t.content_id}
    served = after["pool"]
    for cid in notes:
        hit = reader.get(cid)
        assert hit.hit == (cid in set(served.content_id)) and hit.version == new_version
        rows = served[served.content_id == cid].sort_values("rank")
        assert [q["query"] for q in hit.queries] == rows["query"].tolist()
    assert {c for c in notes if reader.get(c).hit} == {c for c in notes if c in set(before["pool"].content_id)} | \
        {c for c in content.content_id.iloc[310:314] if c in set(served.content_id)}
