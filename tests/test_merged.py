"""Serving an adapter merged into its base: the same model, checked against the base, built once."""
from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch

from cmaq.engines.merged import (AdapterMismatch, check_adapter_base, lora_rank_for, merged_model_dir,
                                 serving_engine, wants_merge)


@pytest.fixture(scope="module")
def other_base(tiny_model, tmp_path_factory):
    """A model of another shape with the tiny model's tokenizer: no adapter of ours fits it."""
    from cmaq.engines.tiny import build_random_backbone

    return str(build_random_backbone(tmp_path_factory.mktemp("other") / "base", hidden=192, layers=3,
                                     tokenizer_from=tiny_model))


@pytest.fixture(scope="module")
def merged(tiny_model, test_adapter, tmp_path_factory):
    return merged_model_dir(tiny_model, test_adapter, tmp_path_factory.mktemp("merged"))


def test_the_merged_model_computes_what_base_plus_lora_computes(tiny_model, test_adapter, merged):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    ids = torch.tensor([[5, 17, 230, 999, 42, 7, 1500]])
    with torch.no_grad():
        lora = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), test_adapter)
        want = lora(input_ids=ids).logits
        got = AutoModelForCausalLM.from_pretrained(merged)(input_ids=ids).logits
        bare = AutoModelForCausalLM.from_pretrained(tiny_model)(input_ids=ids).logits
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert float((bare - want).abs().max()) > 1e-2  # the adapter really changes the model
    assert (merged / "tokenizer.json").is_file() and json.loads((merged / "cmaq_merged.json").read_text())[
        "adapter"] == test_adapter


def test_a_merge_is_built_once_per_base_and_adapter(tiny_model, test_adapter, merged):
    stamp = (merged / "model.safetensors").stat().st_mtime_ns
    assert merged_model_dir(tiny_model, test_adapter, merged.parent) == merged
    assert (merged / "model.safetensors").stat().st_mtime_ns == stamp


def test_hf_beams_of_the_merged_model_match_the_lora_path(engine_config, test_adapter, merged):
    from cmaq.engines import make_engine
    from cmaq.engines.tiny import world_items

    items = [it.public() for it, _ in world_items(31, 20)]
    hf = dataclasses.replace(engine_config, backend="hf")
    via_lora = make_engine(hf).beam(items, width=5, adapter=test_adapter)
    via_merge = make_engine(dataclasses.replace(hf, model_dir=str(merged))).beam(items, width=5)
    same = sum(a.candidates[0].text == b.candidates[0].text for a, b in zip(via_lora, via_merge))
    assert same >= 19, same


def test_an_adapter_of_another_shape_is_refused(test_adapter, other_base):
    with pytest.raises(AdapterMismatch, match="trained for another base"):
        check_adapter_base(test_adapter, other_base)


def test_an_adapter_naming_another_base_here_is_refused(tiny_model, test_adapter, other_base, tmp_path):
    moved = tmp_path / "adapter"
    shutil.copytree(test_adapter, moved)
    cfg = json.loads((moved / "adapter_config.json").read_text())
    (moved / "adapter_config.json").write_text(json.dumps({**cfg, "base_model_name_or_path": other_base}))
    with pytest.raises(AdapterMismatch, match=r"trained for another base .*content"):
        check_adapter_base(moved, tiny_model)
    with pytest.raises(AdapterMismatch, match="not a PEFT adapter"):
        check_adapter_base(tmp_path / "nothing-here", tiny_model)


def test_serving_settings_per_mode(engine_config, tiny_model, test_adapter, merged):
    lora_cfg, adapter = serving_engine(dataclasses.replace(engine_config, adapter_mode="lora"), tiny_model,
                                       test_adapter)
    assert (lora_cfg.model_dir, adapter) == (tiny_model, test_adapter)
    merged_cfg, adapter = serving_engine(dataclasses.replace(engine_config, adapter_mode="merged",
                                                             merge_cache=str(merged.parent)), tiny_model, test_adapter)
    assert (merged_cfg.model_dir, adapter) == (str(merged), None)
    assert wants_merge("auto") is (not torch.cuda.is_available())
    assert serving_engine(engine_config, tiny_model, None) == (dataclasses.replace(engine_config,
                                                                                   model_dir=tiny_model), None)


def test_lora_rank_follows_the_adapters(test_adapter, tmp_path):
    assert lora_rank_for([test_adapter]) == 8 and lora_rank_for([]) == 8
    wide = tmp_path / "r24"
    shutil.copytree(test_adapter, wide)
    cfg = json.loads((wide / "adapter_config.json").read_text())
    (wide / "adapter_config.json").write_text(json.dumps({**cfg, "r": 24}))
    assert lora_rank_for([test_adapter, wide]) == 32
