import dataclasses

import pytest

from cmaq.config import CmaqConfig, ConfigError, WorldConfig, config_hash, load_config, parse_override, to_toml


def test_defaults_are_valid_and_documented():
    cfg = load_config()
    assert cfg == CmaqConfig()
    for section in dataclasses.fields(cfg):
        assert section.metadata.get("help"), section.name
        for f in dataclasses.fields(getattr(cfg, section.name)):
            assert f.metadata.get("help"), f"{section.name}.{f.name} has no help text"


def test_toml_file_and_overrides(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[world]\nseed = 11\nitems = 200\nend_month = "2025-06"\n')
    cfg = load_config(path, ["world.items=300", "world.zh_fraction=0.5"])
    assert (cfg.world.seed, cfg.world.items, cfg.world.zh_fraction, cfg.world.end_month) == (11, 300, 0.5, "2025-06")


def test_toml_round_trip(tmp_path):
    cfg = load_config(None, ["world.seed=3", "world.annotator_noise=0.2"])
    path = tmp_path / "round.toml"
    path.write_text(to_toml(cfg, with_help=True))
    assert load_config(path) == cfg
    assert config_hash(cfg) == config_hash(load_config(path))
    assert config_hash(cfg) != config_hash(CmaqConfig())


@pytest.mark.parametrize("override, fragment", [
    ("world.items=abc", "world.items: expected an integer"),
    ("world.items=0", "world.items: must be >= 1"),
    ("world.zh_fraction=1.5", "world.zh_fraction"),
    ("world.annotator_noise=0.6", "world.annotator_noise"),
    ("world.end_month=2026-13", "world.end_month"),
    ("world.exposed_min=10", "exposed_min <= exposed_max"),
    ("world.nope=1", "world.nope: unknown key"),
    ("nosection.items=1", "nosection: unknown key"),
    ("world.items", "expected section.key=value"),
    ("world.seed=true", "world.seed: expected an integer"),
])
def test_bad_values_name_the_key(override, fragment):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    message = str(err.value)
    assert fragment in message
    assert "\n" not in message


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[world\nseed = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
    wrong = tmp_path / "wrong.toml"
    wrong.write_text("world = 3\n")
    with pytest.raises(ConfigError, match="world: expected a table"):
        load_config(wrong)


def test_override_values_parse_as_toml():
    assert parse_override("world.end_month=2025-01") == ("world.end_month", "2025-01")
    assert parse_override("world.items=1_000") == ("world.items", 1000)
    assert parse_override("a.b=[1, 2]") == ("a.b", [1, 2])


def test_dataclass_validates_directly():
    with pytest.raises(ConfigError):
        WorldConfig(items=-1)
