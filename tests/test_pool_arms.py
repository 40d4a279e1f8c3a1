"""A/B arms in one nightly: every arm published completely, regenerated only where its adapter
changed, read per arm from the cache, refreshed and purged per arm, and a pool published before arms
existed carried forward by the first nightly with them."""
from __future__ import annotations

import json
import shutil
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

from conftest import REPO, command_json, content_slice, pool_version

pytestmark = pytest.mark.usefixtures("importable_doubles")

STYLED = "engine.backend=tests.doubles.engines:AdapterStyledEngine"
ITEMS = 300


@pytest.fixture(scope="module")
def styles(test_adapter, tmp_path_factory) -> dict[str, str]:
    """Adapter directories whose name tells the styled double which word to append (each a real
    PEFT directory with a content hash of its own)."""
    root = tmp_path_factory.mktemp("adapters")
    out = {}
    for word in ("nearby", "tonight", "reviews"):
        d = root / f"style-{word}"
        shutil.copytree(test_adapter, d)
        (d / "style.txt").write_text(word)  # another content hash, the same weights
        out[word] = str(d)
    return out


@pytest.fixture(scope="module")
def content(small_world, tmp_path_factory) -> Path:
    return content_slice(small_world, tmp_path_factory.mktemp("arms-content"), ITEMS)


def _arms(root: Path, kv_url: str, arms: dict[str, tuple[str, float]]) -> list[str]:
    opts = [STYLED, f"pool.root={root}", f"pool.kv_url={kv_url}", "pool.kv_prefix=arms", "pool.items_per_partition=100"]
    for name, (adapter, weight) in arms.items():
        opts += [f"pool.arms.{name}.adapter={adapter}", f"pool.arms.{name}.weight={weight}"]
    return opts


def _frames(spark, root: Path) -> dict[str, pd.DataFrame]:
    vdir, _ = pool_version(root)
    return {n: df.toPandas() for n, df in version_frames(spark, vdir).items()}


def test_three_arms_published_regenerated_read_refreshed_and_purged(spark, content, styles, tmp_path):
    root, kv_url = tmp_path / "pool", f"sqlite:///{tmp_path}/kv.db"
    arms = {"qsa": (styles["nearby"], 0.4), "cmaq": (styles["tonight"], 0.4), "bare": ("none", 0.2)}
    opts = _arms(root, kv_url, arms)
    first = build_pool(spark, load_config(None, opts), str(content))
    assert first.exit_code == EXIT_OK, (first.error, first.gates)
    vdir, manifest = pool_version(root)
    ids = set(pq.read_table(content)["content_id"].to_pylist())
    frames = _frames(spark, root)
    for arm in arms:  # every arm names every item
        named = pd.concat([f[f.arm == arm][["content_id"]] for f in frames.values()])
        assert set(named.content_id) == ids, arm
        assert manifest["counts"]["arms"][arm]["generated"] == ITEMS
    pool = frames["pool"]
    assert pool[pool.arm == "qsa"]["query"].str.endswith(" nearby").all()
    assert pool[pool.arm == "cmaq"]["query"].str.endswith(" tonight").all()
    assert not pool[pool.arm == "bare"]["query"].str.endswith((" nearby", " tonight")).any()
    assert {a: v["weight"] for a, v in manifest["arms"].items()} == {"qsa": 0.4, "cmaq": 0.4, "bare": 0.2}
    assert manifest["traffic_salt"] == "cmaq-arms" and all(g["ok"] for g in manifest["gates"].values())
    assert pq.read_schema(next((vdir / "dropped").glob("*.parquet"))).names[1] == "arm"

    # the cache: one value per (arm, content), the split beside them, the arm required
    reader = Reader(kv_url, "arms")
    cid = sorted(pool.content_id)[0]
    for arm in arms:
        want = pool[(pool.arm == arm) & (pool.content_id == cid)].sort_values("rank")["query"].tolist()
        assert [q["query"] for q in reader.get(cid, arm=arm).queries] == want
    assert reader.split().weights == {"qsa": 0.4, "cmaq": 0.4, "bare": 0.2}
    assert reader.assign("user-7") in arms
    with pytest.raises(ValueError, match="serves arms bare, cmaq, qsa"):
        reader.get(cid)
    cmd = [*sum([["--set", o] for o in opts], []), "pool", "get", cid]
    got = CliRunner().invoke(cli, [*cmd, "--arm", "cmaq"])
    assert got.exit_code == 0 and json.loads(got.output)["arm"] == "cmaq", got.output
    assert CliRunner().invoke(cli, [*cmd, "--arm", "dpo"]).exit_code == 2
    compared = CliRunner().invoke(cli, ["sql", "run", str(REPO / "sql" / "arm_comparison.sql"), "--pool", str(root),
                                        "--csv", str(tmp_path / "arms.csv")])
    assert compared.exit_code == 0, compared.output[-2000:]
    table = pd.read_csv(tmp_path / "arms.csv").set_index("arm")
    assert sorted(table.index) == ["bare", "cmaq", "qsa"]
    for arm in arms:
        assert table.loc[arm, "items_served"] == pool[pool.arm == arm].content_id.nunique()
    # qsa and cmaq append different words to the same double's queries: no query in common
    assert "cmaq: jaccard 0.000, same top 0.000" in table.loc["qsa", "overlap"]

    # a new adapter for one arm regenerates that arm alone
    arms["cmaq"] = (styles["reviews"], 0.4)
    second = build_pool(spark, load_config(None, _arms(root, kv_url, arms)), str(content))
    assert second.exit_code == EXIT_OK, (second.error, second.gates)
    per_arm = second.counts["arms"]
    assert per_arm["cmaq"]["generated"] == ITEMS and per_arm["cmaq"]["carried_forward"] == 0
    assert all(per_arm[a]["generated"] == 0 and per_arm[a]["carried_forward"] == ITEMS for a in ("qsa", "bare"))
    pool2 = _frames(spark, root)["pool"]
    assert pool2[pool2.arm == "cmaq"]["query"].str.endswith(" reviews").all()
    key = ["content_id", "rank", "query"]
    for arm in ("qsa", "bare"):
        before = pool[pool.arm == arm].sort_values(key)[key].reset_index(drop=True)
        assert pool2[pool2.arm == arm].sort_values(key)[key].reset_index(drop=True).equals(before)

    # nearline: a changed note is regenerated in every arm; purge takes a note down in every arm
    opts = _arms(root, kv_url, arms)
    table = pq.read_table(content).to_pandas()
    changed = table.content_id.iloc[5]
    table.loc[table.content_id == changed, ["shop_name", "updated_at"]] = [
        "Harbour Lights Bistro", table.updated_at.max() + pd.Timedelta(hours=1)]
    table.to_parquet(tmp_path / "changed.parquet", index=False)
    refresh = CliRunner().invoke(cli, [*sum([["--set", o] for o in opts], []), "pool", "refresh", "--content",
                                       str(tmp_path / "changed.parquet")])
    assert refresh.exit_code == 0, refresh.output[-3000:]
    assert command_json(refresh.output)["delta"]["items"] == 3  # one note, three arms
    for arm in arms:
        hit = reader.get(changed, arm=arm)
        assert hit.hit and any("Harbour Lights" in q["query"] for q in hit.queries), arm
    purged = CliRunner().invoke(cli, [*sum([["--set", o] for o in opts], []), "pool", "purge", "--content-id", changed])
    assert purged.exit_code == 0, purged.output
    served = _frames(spark, root)["pool"]
    assert changed not in set(served.content_id)
    assert not any(reader.get(changed, arm=arm).hit for arm in arms)
    assert served.groupby("arm").content_id.nunique().to_dict() == {
        a: n - (changed in set(pool2[pool2.arm == a].content_id)) for a, n in
        pool2.groupby("arm").content_id.nunique().items()}


def test_the_first_nightly_with_arms_carries_a_pool_without_arms_forward(spark, content, styles, tmp_path):
    root, kv_url = tmp_path / "pool", f"sqlite:///{tmp_path}/kv.db"
    plain = [STYLED, f"pool.root={root}", f"pool.kv_url={kv_url}", "pool.kv_prefix=arms",
             "pool.items_per_partition=100", f"pool.adapter={styles['nearby']}"]
    before = build_pool(spark, load_config(None, plain), str(content))
    assert before.exit_code == EXIT_OK, before.error
    vdir, manifest = pool_version(root)
    assert "arm" not in pq.read_schema(next((vdir / "dropped").glob("*.parquet"))).names and not manifest["arms"]
    cid = pq.read_table(vdir / "pool")["content_id"][0].as_py()
    assert Reader(kv_url, "arms").get(cid).hit  # today's keys
    old_rows = _frames(spark, root)["pool"]

    armed = build_pool(spark, load_config(None, _arms(root, kv_url, {"qsa": (styles["nearby"], 1),
                                                                      "cmaq": (styles["tonight"], 1)})), str(content))
    assert armed.exit_code == EXIT_OK, (armed.error, armed.gates)
    per_arm = armed.counts["arms"]
    assert per_arm["qsa"] == {**per_arm["qsa"], "carried_forward": ITEMS, "generated": 0}
    assert per_arm["cmaq"]["generated"] == ITEMS
    pool = _frames(spark, root)["pool"]
    key = ["content_id", "rank", "query", "run_id"]
    assert pool[pool.arm == "qsa"].sort_values(key)[key].reset_index(drop=True).equals(
        old_rows.sort_values(key)[key].reset_index(drop=True))  # the old version's own rows, not new ones
    assert armed.gates["volume_change"]["ok"]


def test_an_arm_with_a_missing_or_foreign_adapter_fails_before_generating(spark, content, styles, tiny_model,
                                                                           tmp_path):
    from cmaq.engines.tiny import build_random_backbone

    root = tmp_path / "pool"
    missing = build_pool(spark, load_config(None, _arms(root, "none", {"qsa": (styles["nearby"], 1),
                                                                        "cmaq": (str(tmp_path / "gone"), 1)})),
                         str(content))
    assert missing.exit_code == EXIT_BAD_INPUT and missing.error.startswith("arm cmaq: ")
    assert "\n" not in missing.error
    other = build_random_backbone(tmp_path / "other", hidden=192, layers=3, tokenizer_from=tiny_model)
    foreign = build_pool(spark, load_config(None, [f"model.base_dir={other}", f"pool.root={root}", "pool.kv_url=none",
                                                   f"pool.arms.qsa.adapter={styles['nearby']}"]), str(content))
    assert foreign.exit_code == EXIT_BAD_INPUT and foreign.error.startswith("arm qsa: ")
    assert "trained for another base" in foreign.error
    assert not (root / "current").exists() and not (root / "staging").exists()
    assert sorted(p.name for p in root.iterdir()) == ["runs"]
