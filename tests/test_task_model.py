"""The task model: committed weights that match their recipe, and their float32 copy in the cache."""
import json
from dataclasses import replace

import pytest

from cmaq.config import ConfigError, ModelConfig, load_config
from cmaq.engines.task_model import COMMITTED, RECIPE_FILE, TASK_MODEL, read_recipe, recipe_hash, task_model_dir
from cmaq.engines.tiny import TinyModelConfig, corpus_texts, world_items


def test_the_committed_weights_are_the_recipes_output():
    # Changing the recipe (settings, corpus, tokenizer, architecture or pretraining code) without
    # `make model` leaves weights that no longer come from it.
    recipe = read_recipe()
    assert recipe["recipe_hash"] == recipe_hash(), "the task model's recipe changed: run `make model`"
    assert recipe["settings"] == json.loads(json.dumps(TASK_MODEL.__dict__))
    assert 2_000_000 <= recipe["parameters"] <= 4_000_000
    assert recipe["final_loss"] < recipe["first_loss"] / 3
    size = sum(p.stat().st_size for p in COMMITTED.iterdir())
    assert size <= 10 * 2**20, f"committed task model is {size / 2**20:.1f} MiB (limit 10)"


def test_the_recipe_hash_follows_the_settings():
    assert recipe_hash(replace(TASK_MODEL, pretrain_steps=TASK_MODEL.pretrain_steps + 1)) != recipe_hash()
    assert recipe_hash(replace(TASK_MODEL, query_lists="mixed")) != recipe_hash()


def test_the_cache_copy_is_float32_and_made_once(tmp_path):
    import torch
    from safetensors.torch import load_file
    from transformers import AutoConfig

    first = task_model_dir(tmp_path)
    assert first == task_model_dir(tmp_path)
    assert len([p for p in tmp_path.iterdir()]) == 1  # no temporary directory left behind
    stored, copied = load_file(COMMITTED / "model.safetensors"), load_file(first / "model.safetensors")
    assert stored.keys() == copied.keys()
    for name, tensor in copied.items():
        assert tensor.dtype == torch.float32
        assert torch.equal(tensor, stored[name].to(torch.float32))
    config = AutoConfig.from_pretrained(first)
    assert (config.num_hidden_layers, config.hidden_size) == (TASK_MODEL.num_layers, TASK_MODEL.hidden_size)
    assert (first / RECIPE_FILE).exists() and (first / "tokenizer.json").exists()


def test_a_missing_committed_model_says_how_to_build_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="make model"):
        task_model_dir(tmp_path / "cache", committed=tmp_path / "nothing")


def test_the_factory_setting_is_validated_and_resolved(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="model.factory"):
        load_config(None, ["model.factory=big"])
    import cmaq.engines as engines

    monkeypatch.setattr(engines, "task_model_dir", lambda: tmp_path / "task")
    assert engines.base_model_dir(ModelConfig(factory="task")) == str(tmp_path / "task")
    assert engines.base_model_dir(ModelConfig(factory="task", base_dir="/m")) == "/m"


def test_per_note_query_lists_keep_a_notes_queries_together():
    cfg = TinyModelConfig(corpus_items=40, query_lists="per_note")
    texts = corpus_texts(cfg)
    lists = {frozenset(q for q, _ in g) for _, g in world_items(cfg.world_seed, cfg.corpus_items)}
    found = [t for t in texts if frozenset(t.split("\n")) in lists]
    assert len(found) == cfg.corpus_items  # one list per note, each exactly that note's queries
    mixed = corpus_texts(replace(cfg, query_lists="mixed"))
    assert not [t for t in mixed if frozenset(t.split("\n")) in lists]
