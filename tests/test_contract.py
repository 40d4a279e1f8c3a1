"""The content table's input contract: the schema check and its coercions on small inline rows, then
the nightly and the data builders on tables that break it or use its variants."""
import json
from datetime import datetime, timezone

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from cmaq.cli import main as cli
from cmaq.config import load_config
from jobs.contract import (BAD_UPDATED_AT, DUPLICATE_ID, NULL_CONTENT_ID, BadInput, check_rows, conform,
                           rejected_rows, valid_rows)
from jobs.entry import EXIT_BAD_INPUT, EXIT_OK
from jobs.nightly import build_pool

from conftest import command_json

DOUBLE = "engine.backend=tests.doubles.engines:PlantingEngine"


pytestmark = pytest.mark.usefixtures("importable_doubles")


def _frame(spark, table: pa.Table):
    return spark.createDataFrame(table)  # Arrow types as they are: the contract sees what a reader would


# --------------------------------------------------------------------------- the schema


def test_variants_are_coerced_and_missing_optional_columns_read_as_null(spark):
    table = pa.table({"content_id": pa.array([7, 8], pa.int64()), "title": ["cold brew", "ramen"],
                      "body": ["a quiet cafe", "late night noodles"],
                      "updated_at": ["2026-11-30T08:15:00Z", "2026-11-30 09:00:00"]})
    rows = conform(_frame(spark, table)).toPandas().set_index("content_id")
    assert list(rows.index) == ["7", "8"]  # integer ids become strings
    assert rows.loc["7", "updated_at"] == pd.Timestamp("2026-11-30 08:15:00")
    assert rows.loc["8", "updated_at"] == pd.Timestamp("2026-11-30 09:00:00")
    assert rows[["lang", "category", "shop_name", "shop_info", "district"]].isna().all().all()
    assert not rows["deleted"].any()

    millis = int(datetime(2026, 11, 30, 8, 15, tzinfo=timezone.utc).timestamp() * 1000)
    epoch = pa.table({"content_id": ["a"], "title": ["t"], "body": ["b"], "updated_at": pa.array([millis], pa.int64()),
                      "deleted": [True]})
    row = conform(_frame(spark, epoch)).first()
    assert row["updated_at"].replace(tzinfo=None) == datetime(2026, 11, 30, 8, 15) and row["deleted"] is True


@pytest.mark.parametrize("column, values, expected", [
    ("title", pa.array([1], pa.int64()), "content.title: type bigint, expected string"),
    ("updated_at", pa.array([1.5], pa.float64()), "content.updated_at: type double, expected timestamp"),
    ("deleted", pa.array(["yes"]), "content.deleted: type string, expected boolean"),
    ("content_id", pa.array([1.0], pa.float64()), "content.content_id: type double, expected string"),
])
def test_a_wrong_type_is_one_line_naming_column_type_and_expectation(spark, column, values, expected):
    base = {"content_id": pa.array(["a"]), "title": pa.array(["t"]), "body": pa.array(["b"])}
    with pytest.raises(BadInput) as err:
        conform(_frame(spark, pa.table({**base, column: values})))
    assert str(err.value).startswith(expected) and "\n" not in str(err.value)


def test_a_missing_required_column_is_named(spark):
    with pytest.raises(BadInput, match="required column 'body' is missing"):
        conform(_frame(spark, pa.table({"content_id": ["a"], "title": ["t"]})))


# --------------------------------------------------------------------------- the rows


def test_duplicates_keep_the_newest_and_bad_rows_get_a_reason(spark):
    table = pa.table({
        "content_id": ["a", "a", "a", None, " ", "b"],
        "title": ["old", "newest", "undated", "x", "y", "z"],
        "body": ["1", "2", "3", "4", "5", "6"],
        "updated_at": ["2026-11-01T00:00:00Z", "2026-11-20T00:00:00Z", None, "2026-11-01T00:00:00Z",
                       "2026-11-01T00:00:00Z", "not a date"],
    })
    checked = check_rows(conform(_frame(spark, table))).cache()
    kept = valid_rows(checked).toPandas()
    assert kept.to_dict("records")[0]["title"] == "newest" and len(kept) == 1
    rejected = rejected_rows(checked).toPandas().sort_values(["content_id", "title"])
    assert list(zip(rejected.content_id, rejected.title, rejected.reason)) == [
        ("", "x", NULL_CONTENT_ID), ("", "y", NULL_CONTENT_ID),
        ("a", "old", DUPLICATE_ID), ("a", "undated", DUPLICATE_ID), ("b", "z", BAD_UPDATED_AT)]
    assert rejected[rejected.reason == DUPLICATE_ID].detail.str.contains("2026-11-20").all()
    assert rejected[rejected.reason == BAD_UPDATED_AT].detail.str.contains("not a date").all()


# --------------------------------------------------------------------------- the jobs


def _lake_table(small_world, n: int) -> pd.DataFrame:
    """World content as a JSON-sourced lake table has it: updated_at an ISO string, no district."""
    content = pq.read_table(small_world / "content").slice(0, n).to_pandas().drop(columns=["district"])
    content["updated_at"] = content["updated_at"].dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return content


def test_the_nightly_serves_a_lake_table_with_duplicates_and_takedowns(spark, small_world, tmp_path):
    content = _lake_table(small_world, 30)
    twin = content.iloc[[3]].copy()  # an older copy of item 3 with other text: must not be served
    twin["title"], twin["updated_at"] = "stale title", "2020-01-01T00:00:00Z"
    gone = content.iloc[[5]].copy()  # item 5 taken down after it was written
    gone[["title", "body"]] = None
    gone["updated_at"] = "2030-01-01T00:00:00Z"
    table = pd.concat([content.assign(deleted=False), twin.assign(deleted=False), gone.assign(deleted=True)])
    path = tmp_path / "lake.parquet"
    table.to_parquet(path, index=False)
    root = tmp_path / "pool"
    opts = [DOUBLE, f"pool.root={root}", "pool.max_quarantine_rate=0.1"]  # rejected rows count: 2 of 32

    report = build_pool(spark, load_config(None, opts), str(path))
    assert report.exit_code == EXIT_OK, (report.error, report.gates)
    assert report.counts["read"] == 32 and report.counts["taken_down"] == 1
    assert report.counts["quarantined_by_reason"][DUPLICATE_ID] == 2  # the twin and item 5's live row
    assert report.gates["every_item_accounted_for"]["ok"]
    vdir = root / "versions" / report.run_id
    named = set()
    for table_name in ("pool", "dropped"):
        named |= set(pq.read_table(vdir / table_name).to_pandas().content_id)
    assert content.content_id.iloc[5] not in named  # taken down: not in the version
    quarantine = pq.read_table(vdir / "quarantine").to_pandas()
    twin_rows = quarantine[(quarantine.content_id == content.content_id.iloc[3]) & (quarantine.reason == DUPLICATE_ID)]
    assert len(twin_rows) == 1 and "updated_at" in twin_rows.detail.iloc[0]
    newest = pd.Timestamp(gone["updated_at"].iloc[0]).value // 10**6
    assert report.inputs["max_updated_at_ms"] == newest

    # the next night carries every item forward and quarantines the same rows once again, not twice
    again = build_pool(spark, load_config(None, opts), str(path))
    assert again.exit_code == EXIT_OK and again.counts["generated"] == 0, again.counts
    assert again.counts["quarantined_by_reason"] == report.counts["quarantined_by_reason"]


def test_a_table_breaking_the_contract_writes_nothing_but_its_run_record(spark, small_world, tmp_path):
    content = _lake_table(small_world, 10)
    content["title"] = range(10)
    path = tmp_path / "bad.parquet"
    content.to_parquet(path, index=False)
    root = tmp_path / "pool"
    opts = ["--set", DOUBLE, "pool", "build", "--content", str(path), "--root", str(root)]
    result = CliRunner().invoke(cli, opts)
    assert result.exit_code == EXIT_BAD_INPUT, result.output[-2000:]
    out = command_json(result.output)
    assert out["status"] == "bad_input" and out["error"] == "content.title: type bigint, expected string"
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) == ["runs", f"runs/{out['run_id']}.json"]
    record = json.loads((root / "runs" / f"{out['run_id']}.json").read_text())
    assert record["status"] == "bad_input" and record["exit_code"] == EXIT_BAD_INPUT

    missing = CliRunner().invoke(cli, [*opts[:-4], "--content", str(tmp_path / "nope"), "--root", str(root)])
    assert missing.exit_code == EXIT_BAD_INPUT and "cannot read it" in command_json(missing.output)["error"]


def test_the_data_builders_apply_the_contract(spark, small_world, tmp_path):
    content = _lake_table(small_world, 600)
    content["content_id"] = content["content_id"].str.slice(1).astype("int64")  # integer ids
    path = tmp_path / "lake.parquet"
    content.to_parquet(path, index=False)
    logs = pq.read_table(small_world / "logs").to_pandas()
    logs["content_id"] = logs["content_id"].str.slice(1).astype("int64").astype(str)
    logs_path = tmp_path / "logs.parquet"
    logs.to_parquet(logs_path, index=False)
    ok = CliRunner().invoke(cli, ["data", "ctr-pairs", "--content", str(path), "--logs", str(logs_path),
                                  "--out", str(tmp_path / "out")])
    assert ok.exit_code == 0, ok.output[-2000:]
    assert command_json(ok.output)["written"] > 0
    broken = content.assign(body=1.0)
    broken.to_parquet(path, index=False)
    bad = CliRunner().invoke(cli, ["data", "ctr-pairs", "--content", str(path), "--logs", str(logs_path),
                                   "--out", str(tmp_path / "out2")])
    assert bad.exit_code == 2 and "content.body: type double, expected string" in bad.output
