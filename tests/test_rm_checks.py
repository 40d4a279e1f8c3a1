"""The reward-model checks of the evaluation: note-blindness (η² of the query string) and swapped-note
pairs and accuracy, on inline rows and on the small world's answer key."""
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from cmaq.text import normalize
from cmaq.world import lexicon as lx
from cmaq.world.oracle import Oracle
from training.evaluate.rm_checks import (CTR_LOGIT_MARGIN, EXP_MARGIN, MIN_NOTES, note_blindness,
                                         swapped_accuracy, swapped_ctr_pairs, swapped_exp_pairs,
                                         variance_explained)


def _samples(n_strings: int, notes_per_string: int, score_of) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = [(f"c{c}", f"q{s}") for s in range(n_strings) for c in rng.choice(97, notes_per_string, replace=False)]
    frame = pd.DataFrame(rows, columns=["content_id", "query"])
    values = np.array([score_of(c, q, rng) for c, q in zip(frame.content_id, frame["query"])])
    return frame.assign(r_exp=values, r_ctr_raw=values, true_exp=values, true_ctr=values)


def test_variance_explained_by_the_string_alone_and_by_the_note_alone():
    by_string = _samples(60, 20, lambda c, q, rng: float(q[1:]))              # the string decides
    assert variance_explained(by_string, "r_exp") == pytest.approx(1.0)
    by_note = _samples(60, 20, lambda c, q, rng: float(c[1:]))                # the note decides
    assert variance_explained(by_note, "r_exp") < 0.15
    mixed = _samples(60, 20, lambda c, q, rng: float(q[1:]) + 30 * rng.standard_normal())
    assert 0.2 < variance_explained(mixed, "r_exp") < 0.8


def test_note_blindness_needs_enough_strings_and_rows():
    enough = note_blindness(_samples(60, 20, lambda c, q, rng: float(q[1:])))
    assert enough["computed"] and enough["strings_on_min_notes"] == 60 and enough["rows_of_those_strings"] >= 1000
    assert enough["variance_explained_by_string"]["r_exp"] == pytest.approx(1.0)
    few = note_blindness(_samples(40, 30, lambda c, q, rng: float(q[1:])))
    assert not few["computed"] and few["variance_explained_by_string"]["r_exp"] is None
    rare = _samples(80, MIN_NOTES - 1, lambda c, q, rng: 1.0)
    assert note_blindness(rare)["strings_on_min_notes"] == 0


def test_within_note_spearman_follows_the_oracle():
    frame = _samples(60, 20, lambda c, q, rng: rng.random())
    frame["true_exp"] = frame["r_exp"] * 2 + 1          # same order within every note
    frame["true_ctr"] = -frame["r_ctr_raw"]             # the reverse order
    within = note_blindness(frame)["within_note_spearman"]
    assert within["r_exp"] == pytest.approx(1.0) and within["r_ctr_raw"] == pytest.approx(-1.0)


def test_swapped_accuracy_counts_agreeing_orders():
    items = pd.DataFrame({"content_id": ["a", "b"], "lang": "en", "category": "cafe"})
    pairs = pd.DataFrame({"content_id": ["a", "a", "b"], "partner": ["b", "b", "a"], "query": ["x", "y", "z"],
                          "truth_a": [0.9, 0.1, 0.5], "truth_b": [0.1, 0.9, 0.2]})

    def score(its, queries):  # prefers note a for every query
        return np.array([1.0 if it["content_id"] == "a" else 0.0 for it in its])

    result = swapped_accuracy(pairs, items, score)
    assert result == {"pairs": 3, "accuracy": pytest.approx(1 / 3, abs=1e-4)}
    assert swapped_accuracy(pairs.iloc[:0], items, score) == {"pairs": 0, "accuracy": None}


@pytest.fixture(scope="module")
def held_out(small_world):
    return pq.read_table(small_world / "content").to_pandas().astype({"content_id": str})


def test_swapped_ctr_pairs_are_clear_and_within_a_category(small_world, held_out):
    pairs = swapped_ctr_pairs(small_world, held_out, Oracle())
    assert len(pairs) > 200
    assert (pairs.content_id != pairs.partner).all()
    by_id = held_out.set_index("content_id")
    for side in ("lang", "category"):
        assert (by_id.loc[pairs.content_id, side].to_numpy() == by_id.loc[pairs.partner, side].to_numpy()).all()
    logit = lambda p: np.log(p / (1 - p))  # noqa: E731
    assert (np.abs(logit(pairs.truth_a) - logit(pairs.truth_b)) >= CTR_LOGIT_MARGIN).all()
    # truth_b is the oracle's judgement under the partner
    row = pairs.iloc[0]
    assert Oracle().score(by_id.loc[row.partner].to_dict() | {"content_id": row.partner}, row["query"])[0] \
        == pytest.approx(row.truth_b)


def test_swapped_exp_pairs_name_a_topic_only_the_partner_mentions(small_world, held_out):
    pairs = swapped_exp_pairs(small_world, held_out, Oracle())
    assert len(pairs) > 20
    text = {r["content_id"]: normalize(" ".join(str(r[c]) for c in ("title", "body", "shop_info", "shop_name")))
            for r in held_out.to_dict("records")}
    assert (np.abs(pairs.truth_a - pairs.truth_b) >= EXP_MARGIN).all()
    assert (pairs.truth_a > pairs.truth_b).mean() > 0.9  # the topic is news only to note A
    group = held_out.set_index("content_id")
    for a, b, q in zip(pairs.content_id, pairs.partner, pairs["query"]):
        cat = lx.CATEGORY_BY_KEY[group.loc[a, "category"]]
        lang = group.loc[a, "lang"]
        topics = [normalize(t) for t in (*cat.near(lang), *cat.far(lang)) if normalize(t) in normalize(q)]
        assert any(t in text[b] and t not in text[a] for t in topics), (a, b, q)


def test_eval_rms_records_both_checks_in_each_rm(trained_rms, small_world, rm_data, tmp_path):
    import json
    import shutil

    from click.testing import CliRunner

    from cmaq.cli import main as cli
    from conftest import command_json

    out, _, _ = trained_rms
    for kind in ("exp", "ctr"):  # the fixture's RMs stay as they are
        shutil.copytree(out / kind, tmp_path / kind)
    result = CliRunner().invoke(cli, ["eval", "rms", "--world", str(small_world), "--test-contents",
                                      str(rm_data / "test_contents"), "--rm-exp", str(tmp_path / "exp"),
                                      "--rm-ctr", str(tmp_path / "ctr"), "--k", "4", "--limit", "40"])
    assert result.exit_code == 0, result.output[-2000:]
    report = command_json(result.output)
    assert report["held_out_notes"] == 40 and report["note_blindness"]["samples"] > 40
    for kind, objective in (("exp", "expansion"), ("ctr", "ctr")):
        metrics = json.loads((tmp_path / kind / "metrics.json").read_text())
        assert metrics["swapped_note"] == report["swapped_note"][objective]
        assert metrics["swapped_note"]["pairs"] > 0
        blind = metrics["note_blindness"]
        assert blind["k"] == 4 and blind["computed"] is False and blind["variance_explained_by_string"] is None
        assert -1 <= blind["within_note_spearman"] <= 1
    missing = CliRunner().invoke(cli, ["eval", "rms", "--world", str(small_world), "--test-contents",
                                       str(rm_data / "test_contents"), "--rm-exp", str(tmp_path / "exp"),
                                       "--rm-ctr", str(tmp_path / "ctr"), "--limit", "100000"])
    assert missing.exit_code == 2 and "held out" in missing.output
