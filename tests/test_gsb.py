"""Figure 6's GSB kit end to end: export a blinded sheet, judge it with the oracle, import the judgements."""
import csv

import pandas as pd
from click.testing import CliRunner

from cmaq.cli import main as cli
from conftest import command_json


def _rows(world, tmp_path, n_notes=120):
    content = pd.read_parquet(world / "content")
    ids = content["content_id"].sort_values().head(n_notes).reset_index(drop=True)
    pd.DataFrame({"content_id": ids}).to_parquet(tmp_path / "test_contents.parquet")
    truth = pd.read_parquet(world / "truth" / "grammar", columns=["content_id", "query", "kind"])
    own = truth[truth["kind"] == "entity"].groupby("content_id")["query"].first()
    off = truth[truth["kind"] == "off_topic"].groupby("content_id")["query"].first()
    rows = pd.concat([pd.DataFrame({"policy": "own-entity", "content_id": ids, "exposed_query": ids.map(own)}),
                      pd.DataFrame({"policy": "off-topic", "content_id": ids, "exposed_query": ids.map(off)})])
    rows.to_parquet(tmp_path / "rows.parquet")
    return content.set_index("content_id").loc[ids]


def test_gsb_kit_round_trips_a_simulated_judgement(small_world, tmp_path):
    notes = _rows(small_world, tmp_path)
    common = ["--world", str(small_world), "--test-contents", str(tmp_path / "test_contents.parquet")]
    run = CliRunner().invoke
    out = run(cli, ["eval", "gsb", "export", "--rows", str(tmp_path / "rows.parquet"), *common, "--a", "own-entity",
                    "--b", "off-topic", "--notes", "60", "--out", str(tmp_path / "gsb")])
    assert out.exit_code == 0, out.output
    sheet = pd.read_csv(tmp_path / "gsb" / "gsb_sheet.csv", keep_default_na=False)
    key = pd.read_csv(tmp_path / "gsb" / "gsb_key.csv")
    assert len(sheet) == 60 and sheet["item_id"].is_unique and (sheet["judgement"] == "").all()
    assert (tmp_path / "gsb" / "gsb_sheet.csv").read_bytes().startswith("\ufeff".encode())  # Excel reads UTF-8
    # blinded (no policy name on the sheet) and side-shuffled
    assert not sheet.astype(str).apply(lambda c: c.str.contains("own-entity|off-topic")).any().any()
    assert 10 < (key["left"] == "own-entity").sum() < 50
    # stratified: each category holds its share of the 60, to within one note
    share = notes["category"].value_counts() / len(notes) * 60
    got = pd.Series(key["content_id"].map(notes["category"]).value_counts())
    assert ((got.reindex(share.index, fill_value=0) - share).abs() < 1.0 + 1e-9).all()

    out = run(cli, ["eval", "gsb", "judge", *common, "--sheet", str(tmp_path / "gsb" / "gsb_sheet.csv"),
                    "--key", str(tmp_path / "gsb" / "gsb_key.csv"), "--out", str(tmp_path / "judged.csv")])
    assert out.exit_code == 0, out.output
    out = run(cli, ["eval", "gsb", "import", "--key", str(tmp_path / "gsb" / "gsb_key.csv"), "--a", "own-entity",
                    str(tmp_path / "judged.csv")])
    assert out.exit_code == 0, out.output
    good = command_json(out.output)
    assert good["judgements"] == 60 and good["malformed"] == 0 and good["b"] == "off-topic"
    assert good["unjudged_items"] == 0
    assert good["G_count"] + good["S_count"] + good["B_count"] == 60
    assert good["G_rate"] > 0.7 and good["gsb"] > 0.5  # the note's own dish beats an off-topic query
    assert good["gsb_interval"][0] <= good["gsb"] <= good["gsb_interval"][1]
    flipped = command_json(run(cli, ["eval", "gsb", "import", "--key", str(tmp_path / "gsb" / "gsb_key.csv"),
                                     "--a", "off-topic", str(tmp_path / "judged.csv")]).output)
    assert flipped["gsb"] == -good["gsb"] and flipped["G_count"] == good["B_count"]


def test_gsb_import_lists_every_malformed_row_and_exits_2(small_world, tmp_path):
    _rows(small_world, tmp_path, n_notes=30)
    common = ["--world", str(small_world), "--test-contents", str(tmp_path / "test_contents.parquet")]
    run = CliRunner().invoke
    assert run(cli, ["eval", "gsb", "export", "--rows", str(tmp_path / "rows.parquet"), *common, "--a", "own-entity",
                     "--b", "off-topic", "--notes", "10", "--out", str(tmp_path / "gsb")]).exit_code == 0
    sheet = pd.read_csv(tmp_path / "gsb" / "gsb_sheet.csv", keep_default_na=False)
    judged = sheet.assign(judgement=["L", "right", "Same", "s", "left", "", "maybe", "left", "right", "left"])
    rows = judged.to_dict("records") + [{**judged.iloc[0].to_dict(), "judgement": "left"},   # judged twice
                                        {**judged.iloc[1].to_dict(), "item_id": "g9999"}]     # not on the sheet
    path = tmp_path / "judge1.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(sheet.columns))
        w.writeheader()
        w.writerows(rows)
    out = CliRunner().invoke(cli, ["eval", "gsb", "import", "--key", str(tmp_path / "gsb" / "gsb_key.csv"),
                                                   "--a", "own-entity", str(path)])
    assert out.exit_code == 2
    lines = [ln for ln in out.stderr.splitlines() if ln.startswith(str(path))]
    # the header is row 1: the empty and the unreadable judgements are rows 7 and 8, the duplicate row 12,
    # the stranger row 13; each also names the line its record starts on (bodies may span lines)
    assert [ln.split("(row ")[1].split(")")[0] for ln in lines] == ["7", "8", "12", "13"], out.stderr
    text = path.read_text(encoding="utf-8").splitlines()
    for ln in lines:
        start = int(ln[len(str(path)) + 1:].split(" ")[0])
        assert text[start - 1].startswith("g"), (ln, text[start - 1])  # a record starts with its item id
    assert "judged twice" in lines[2] and "g9999" in lines[3]
    summary = command_json(out.stdout)
    assert summary["judgements"] == 8 and summary["malformed"] == 4  # nothing dropped silently
    assert summary["unjudged_items"] == 2                             # the empty and the unreadable one
    missing = tmp_path / "nocol.csv"
    missing.write_text("item_id,verdict\ng0001,left\n")
    out = CliRunner().invoke(cli, ["eval", "gsb", "import", "--key", str(tmp_path / "gsb" / "gsb_key.csv"),
                                                   "--a", "own-entity", str(missing)])
    assert out.exit_code == 2 and "missing column(s) judgement" in out.stderr


def test_notes_without_a_category_are_sampled_as_a_stratum_of_their_own():
    from training.evaluate.gsb import stratified_sample

    items = pd.DataFrame({"content_id": [f"c{i:02d}" for i in range(40)],
                          "category": ["food"] * 20 + ["hotel"] * 10 + [None] * 10})
    picked = stratified_sample(items, 8, seed=3)
    assert picked["category"].value_counts().to_dict() == {"food": 4, "hotel": 2, "(none)": 2}
