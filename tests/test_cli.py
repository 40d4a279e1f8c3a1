import json

import pytest
from click.testing import CliRunner

from cmaq.cli import main


@pytest.fixture()
def runner():
    return CliRunner()


@pytest.mark.parametrize("args", [["--help"], ["world", "--help"], ["world", "generate", "--help"],
                                  ["world", "summary", "--help"], ["config", "--help"], ["config", "show", "--help"]])
def test_help_texts(runner, args):
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output and len(result.output.splitlines()) > 3


def test_config_show_reflects_file_and_overrides(runner, tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[world]\nseed = 21\n")
    result = runner.invoke(main, ["--config", str(cfg), "--set", "world.items=77", "config", "show", "--json"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert shown["world"]["seed"] == 21 and shown["world"]["items"] == 77
    toml = runner.invoke(main, ["config", "show", "--help-fields"]).output
    assert "[world]" in toml and "# Seed of the world" in toml


@pytest.mark.parametrize("args, fragment", [
    (["--set", "world.items=-3", "config", "show"], "world.items: must be >= 1"),
    (["--set", "world.bogus=1", "config", "show"], "world.bogus: unknown key"),
    (["--config", "/no/such/file.toml", "config", "show"], "config file not found"),
    (["world", "summary", "."], "no world.json here"),
])
def test_bad_configuration_exits_2_with_one_line(runner, args, fragment):
    result = runner.invoke(main, args)
    assert result.exit_code == 2
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and fragment in errors[0], result.output


def test_bad_option_exits_2(runner):
    result = runner.invoke(main, ["world", "generate", "--items", "0", "--out", "x"])
    assert result.exit_code == 2
    assert "--items" in result.output


def test_generate_and_summary(runner, tmp_path):
    out = tmp_path / "w"
    result = runner.invoke(main, ["world", "generate", "--items", "50", "--seed", "3", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert f"{out}/content/" in result.output and "50 notes" in result.output
    manifest = json.loads((out / "world.json").read_text())
    assert manifest["config"]["seed"] == 3 and manifest["counts"]["content"] == 50
    again = runner.invoke(main, ["world", "generate", "--items", "50", "--out", str(out)])
    assert again.exit_code == 2 and "not empty" in again.output
    summary = runner.invoke(main, ["world", "summary", str(out)])
    assert summary.exit_code == 0 and "50 notes" in summary.output


def test_data_commands_have_help_and_need_input(runner):
    for kind in ("sft", "ctr-pairs", "expansion"):
        result = runner.invoke(main, ["data", kind, "--help"])
        assert result.exit_code == 0 and "--out" in result.output
    missing = runner.invoke(main, ["data", "sft", "--out", "x"])
    assert missing.exit_code == 2 and "--world or --content" in missing.output


def test_config_options_set_their_field_over_set_and_carry_its_help(runner, tmp_path):
    from cmaq.config import WorldConfig, help_of

    help_text = runner.invoke(main, ["world", "generate", "--help"], terminal_width=400).output
    assert help_of(WorldConfig, "items") in " ".join(help_text.split()) and "[world.items]" in help_text
    out = tmp_path / "w"
    result = runner.invoke(main, ["--set", "world.items=50", "--set", "world.seed=4", "world", "generate",
                                  "--items", "7", "--quiet", "--out", str(out)])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "world.json").read_text())
    assert manifest["counts"]["content"] == 7 and manifest["config"]["seed"] == 4  # option over --set


def test_a_deprecated_key_is_one_warning_line(runner):
    result = runner.invoke(main, ["--set", "rm_ctr.model_dir=/m", "config", "show", "--json"])
    assert result.exit_code == 0
    warnings = [line for line in result.output.splitlines() if line.startswith("Warning:")]
    assert warnings == ["Warning: rm_ctr.model_dir is deprecated: set model.base_dir (the base of every model); "
                        "rm_ctr.model_dir still overrides it for rm_ctr alone"]
