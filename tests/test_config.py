import dataclasses
import warnings

import pytest

from cmaq.config import (CmaqConfig, ConfigDeprecation, ConfigError, ModelConfig, WorldConfig, config_hash, load_config,
                         parse_override, to_dict, to_toml, with_values)


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


# --------------------------------------------------------------------------- one error naming per section
# The same dataclass serves two sections (rm_exp / rm_ctr, sft / align's base): the message must name
# the key as the user wrote it, not the class's idea of it.

@pytest.mark.parametrize("override, key", [
    ("world.months=0", "world.months"),
    ("filters.serving=[\"nope\"]", "filters.serving"),
    ("filters.lexical.max_words=0", "filters.lexical.max_words"),
    ("filters.similarity.max_shop_similarity=0", "filters.similarity.max_shop_similarity"),
    ("filters.relevance.ngram_latin=9", "filters.relevance.ngram_latin"),
    ("filters.relevance.ngram_cjk=9", "filters.relevance.ngram_cjk"),
    ("filters.harm.extra_terms_files=[\"/no/such/file\"]", "filters.harm.extra_terms_files"),
    ("model.base_dir=3", "model.base_dir"),
    ("engine.beam_width=0", "engine.beam_width"),
    ("data.test_fraction=1.5", "data.test_fraction"),
    ("pool.kv_keep=0", "pool.kv_keep"),
    ("rm_exp.lora_r=0", "rm_exp.lora_r"),
    ("rm_ctr.lora_r=0", "rm_ctr.lora_r"),
    ("rm_ctr.normalisation=\"tanh\"", "rm_ctr.normalisation"),
    ("sft.lr=0", "sft.lr"),
    ("align.lr=-1", "align.lr"),
    ("align.tau2=0.9", "align.tau2"),
    ("reproduce.bootstrap=5", "reproduce.bootstrap"),
])
def test_every_section_names_the_key_as_written(override, key):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert str(err.value).startswith(f"{key}: "), str(err.value)


def test_with_values_returns_a_validated_copy():
    cfg = load_config()
    changed = with_values(cfg, {"pool.root": "/data/pool", "world.items": "12", "sft.out": None})
    assert (changed.pool.root, changed.world.items) == ("/data/pool", 12)
    assert cfg.pool.root == "pool" and cfg == CmaqConfig()  # the original is untouched
    with pytest.raises(ConfigError, match=r"^rm_ctr\.lr: must be > 0"):
        with_values(cfg, {"rm_ctr.lr": 0})
    with pytest.raises(ConfigError, match=r"^pool\.nope: unknown key"):
        with_values(cfg, {"pool.nope": 1})


def test_a_sections_old_model_dir_still_works_and_warns():
    with pytest.warns(ConfigDeprecation, match=r"rm_exp\.model_dir is deprecated: set model\.base_dir"):
        cfg = load_config(None, ["rm_exp.model_dir=/models/base"])
    assert cfg.rm_exp.model_dir == "/models/base" and cfg.model.base_dir == ""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the one setting, and an empty old key, warn of nothing
        assert load_config(None, ["model.base_dir=/models/base", 'engine.model_dir=""']).model.base_dir \
            == "/models/base"


def test_one_base_model_setting_with_section_overrides(tiny_model):
    from cmaq.engines import base_model_dir
    from jobs.plan import resolve_serving

    assert base_model_dir(ModelConfig(base_dir="/m")) == "/m"
    assert base_model_dir(ModelConfig(base_dir="/m"), "/override") == "/override"
    assert base_model_dir(None) == tiny_model == base_model_dir(ModelConfig())
    cfg = load_config(None, [f"model.base_dir={tiny_model}"])
    serving = resolve_serving(cfg, None)
    assert serving.model_dir == tiny_model and cfg.engine.model_dir == ""  # resolved, not written back


def test_a_toml_written_for_the_old_keys_loads_every_value(tmp_path):
    # Keys as the configuration had them before [model] existed: every one still lands where it did.
    path = tmp_path / "old.toml"
    path.write_text('[engine]\nbackend = "hf"\nmodel_dir = "/m"\nmax_model_len = 481\n'
                    '[filters.lexical]\nmax_words = 12\n[rm_exp]\nmodel_dir = "/m"\nlora_r = 16\n'
                    '[sft]\nmodel_dir = "/m"\nlr = 0.001\n[align]\nalpha = 0.6\nmodel_dir = "/m"\n'
                    '[pool]\nroot = "/data/pool"\n')
    with pytest.warns(ConfigDeprecation):
        cfg = to_dict(load_config(path))
    assert cfg["engine"] | {"backend": "hf", "model_dir": "/m", "max_model_len": 481} == cfg["engine"]
    assert (cfg["filters"]["lexical"]["max_words"], cfg["rm_exp"]["lora_r"], cfg["rm_exp"]["model_dir"],
            cfg["sft"]["lr"], cfg["align"]["alpha"], cfg["align"]["model_dir"], cfg["pool"]["root"]) \
        == (12, 16, "/m", 0.001, 0.6, "/m", "/data/pool")


def test_serving_config_hash_of_the_defaults_is_pinned():
    # Every record of a deployed pool carries this hash: if it moves, the next nightly regenerates
    # every item. Renaming a field or moving code must not move it; a deliberate change updates it here.
    from jobs.plan import serving_config_hash

    # Issue 18: the lexical filter's machine-junk rules and engine.length_penalty = 0 moved it deliberately
    assert serving_config_hash(load_config()) == "32596adc3cef1511"
