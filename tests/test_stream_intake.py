"""The stream's intake: dropped files checked before the stream reads them (no Spark here)."""
import json
import os
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.stream_intake import ACCEPTED_SCHEMA, BadFile, Intake, read_dropped


def _drop(intake: Intake, name: str, write) -> Path:
    """The producer's side of the convention: write under a hidden name, rename into place."""
    tmp = intake.drop / f"_{name}.tmp"
    write(tmp)
    os.replace(tmp, intake.drop / name)
    return intake.drop / name


def _reasons(intake: Intake) -> dict:
    return {json.loads(p.read_text())["file"]: json.loads(p.read_text())["reason"]
            for p in intake.quarantine.glob("*.reason.json")}


def test_good_files_become_parquet_in_one_schema(tmp_path):
    intake = Intake(tmp_path)
    stamp = datetime(2026, 12, 4, 8, 30, 15, 250000)
    _drop(intake, "notes.parquet", lambda p: pq.write_table(pa.table({
        "content_id": pa.array([7, 8], pa.int64()), "title": ["a", "b"], "body": ["x", None],
        "updated_at": pa.array([stamp, None], pa.timestamp("us")), "shop_name": ["s", "t"], "other": [1, 2]}), p))
    _drop(intake, "events.jsonl", lambda p: p.write_text(
        '{"content_id": "9", "title": "t", "body": "b", "updated_at": 1796373015250}\n\n'
        '{"content_id": "7", "deleted": true}\n'))
    done = intake.scan()
    assert sorted(done["accepted"]) == ["events.jsonl", "notes.parquet"] and done["quarantined"] == []
    assert not any(intake.drop.iterdir())
    accepted = {}
    for path in intake.accepted.iterdir():
        table = pq.read_table(path)
        assert table.schema.equals(ACCEPTED_SCHEMA), table.schema
        accepted[table.column("_file")[0].as_py()] = table.to_pylist()
    notes, events = accepted["notes.parquet"], accepted["events.jsonl"]
    assert [r["content_id"] for r in notes] == ["7", "8"] and notes[0]["shop_name"] == "s"
    # a zone-less timestamp is UTC, and its fraction survives
    assert notes[0]["updated_at"] == "2026-12-04T08:30:15.250000Z" and notes[1]["updated_at"] is None
    assert events[0]["updated_at"] == "2026-12-04T08:30:15.250000Z"  # epoch milliseconds
    assert events[1]["deleted"] is True and events[1]["title"] is None  # a takedown line needs no text
    assert all(r["_arrived_ms"] > 0 for r in notes + events)


@pytest.mark.parametrize("name, write, reason", [
    ("wrong_type.parquet", lambda p: pq.write_table(pa.table({"content_id": ["1"], "title": [1], "body": ["b"]}), p),
     "column 'title' has type int64, expected string"),
    ("no_body.parquet", lambda p: pq.write_table(pa.table({"content_id": ["1"], "title": ["t"]}), p),
     "required column 'body' is missing"),
    ("bad_deleted.jsonl", lambda p: p.write_text('{"content_id": "1", "deleted": "yes"}\n'),
     "line 1: deleted is str"),
    ("broken.jsonl", lambda p: p.write_text('{"content_id": "1", "title": "t", "body": "b"}\n{"content_id": \n'),
     "line 2: not valid JSON"),
    ("list.json", lambda p: p.write_text('[1, 2]\n'), "line 1: a JSON object per line is expected"),
    ("notes.csv", lambda p: p.write_text("content_id,title\n1,t\n"), "unknown format .csv"),
])
def test_a_bad_file_is_quarantined_with_its_name_and_reason(tmp_path, name, write, reason):
    intake = Intake(tmp_path)
    _drop(intake, name, write)
    good = _drop(intake, "good.jsonl", lambda p: p.write_text('{"content_id": "1", "title": "t", "body": "b"}\n'))
    done = intake.scan()
    assert done == {"accepted": ["good.jsonl"], "quarantined": [name]}
    assert reason in _reasons(intake)[name]
    moved = [p for p in intake.quarantine.iterdir() if p.name.endswith(name)]
    assert len(moved) == 1 and moved[0].stat().st_size > 0  # the file itself, kept as it came
    assert not good.exists() and len(list(intake.accepted.iterdir())) == 1


def test_a_truncated_parquet_file_is_quarantined(tmp_path):
    intake = Intake(tmp_path)
    whole = tmp_path / "whole.parquet"
    pq.write_table(pa.table({"content_id": ["1"] * 500, "title": ["t"] * 500, "body": ["b" * 50] * 500}), whole)
    _drop(intake, "cut.parquet", lambda p: p.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2]))
    assert intake.scan()["quarantined"] == ["cut.parquet"]
    assert "footer" in _reasons(intake)["cut.parquet"]
    with pytest.raises(BadFile, match="footer"):
        read_dropped(next(p for p in intake.quarantine.iterdir() if p.name.endswith("cut.parquet")))


def test_a_file_under_a_temporary_name_is_never_read(tmp_path):
    intake = Intake(tmp_path)
    (intake.drop / "_half.parquet").write_bytes(b"PAR1 still being written")
    (intake.drop / ".hidden.jsonl").write_text("{not json")
    assert intake.scan() == {"accepted": [], "quarantined": []}
    assert sorted(p.name for p in intake.drop.iterdir()) == [".hidden.jsonl", "_half.parquet"]
    assert not any(intake.quarantine.iterdir()) and not any(intake.accepted.iterdir())
