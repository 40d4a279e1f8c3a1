"""The demo's simulated A/B of a pool's arms, read through a real (SQLite) cache and scored by the oracle."""
from __future__ import annotations

import math

import pyarrow.parquet as pq
import pytest

from cmaq.pool.arms import assign_arm
from cmaq.pool.reader import Reader
from cmaq.pool.sinks import ARMS_ITEM, encode_arms, encode_value, item_id, open_sink
from cmaq.world.oracle import Oracle
from training.evaluate.pool_ab import simulate_pool_ab

VERSION = "v-ab"


def publish(url: str, served: dict[str, dict[str, list[str]]], weights: dict, salt: str = "s") -> None:
    sink = open_sink(url, "cmaq")
    items = [(ARMS_ITEM, encode_arms(weights, salt))]
    for arm, per_note in served.items():
        for cid, queries in per_note.items():
            items.append((item_id(cid, arm), encode_value(cid, VERSION, [
                {"rank": r, "query": q, "logprob": -1.0, "relevance": 0.5} for r, q in enumerate(queries, 1)])))
    sink.write(VERSION, items)
    sink.set_pointer(VERSION)


@pytest.fixture(scope="module")
def notes(small_world):
    return pq.read_table(small_world / "content").slice(0, 4).to_pylist()


def test_each_arm_shows_its_own_top_query_to_its_own_users(tmp_path, notes):
    url = f"sqlite:///{tmp_path / 'kv.db'}"
    a, b = [n["content_id"] for n in notes[:2]]
    # arm "one" serves the first two notes; arm "two" serves all four, with another top query
    served = {"one": {a: [notes[0]["title"], "x"], b: [notes[1]["title"]]},
              "two": {n["content_id"]: ["cheap hotel near me", notes[0]["title"]] for n in notes}}
    weights = {"one": 0.3, "two": 0.7}
    publish(url, served, weights)
    users = 500
    ab = simulate_pool_ab(Reader(url), notes, Oracle(), users=users, seed=1).set_index("arm")

    n_one = sum(assign_arm(f"user-{u:06d}", weights, "s") == "one" for u in range(users))
    assert ab.loc["one", "impressions"] == n_one * len(notes)
    assert ab.loc["two", "impressions"] == (users - n_one) * len(notes)
    assert ab.loc["one", "exposure"] == pytest.approx(0.5)
    assert ab.loc["two", "exposure"] == pytest.approx(1.0)
    oracle = Oracle()
    ctr_one = [oracle.score(notes[0], notes[0]["title"])[0], oracle.score(notes[1], notes[1]["title"])[0]]
    assert ab.loc["one", "true_ctr"] == pytest.approx(sum(ctr_one) / len(notes))  # 0 where nothing is shown
    ctr_two = [oracle.score(n, "cheap hotel near me")[0] for n in notes]
    assert ab.loc["two", "true_ctr"] == pytest.approx(sum(ctr_two) / len(notes))
    exp_two = [oracle.score(n, "cheap hotel near me")[1] for n in notes]
    assert ab.loc["two", "true_exp"] == pytest.approx(sum(exp_two) / len(notes))
    for arm in ("one", "two"):
        assert 0 <= ab.loc[arm, "clicks"] <= ab.loc[arm, "impressions"]
        assert math.isclose(ab.loc[arm, "observed_ctr"], ab.loc[arm, "clicks"] / ab.loc[arm, "impressions"])


def test_a_version_without_arms_is_refused(tmp_path, notes):
    url = f"sqlite:///{tmp_path / 'kv.db'}"
    sink = open_sink(url, "cmaq")
    sink.write(VERSION, [(notes[0]["content_id"], encode_value(notes[0]["content_id"], VERSION, []))])
    sink.set_pointer(VERSION)
    with pytest.raises(ValueError, match="serves no arms"):
        simulate_pool_ab(Reader(url), notes, Oracle())
