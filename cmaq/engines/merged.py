"""Serving a LoRA adapter at the bare model's speed: merge its weights into the base once and serve
the merged directory as a plain model.

Per-request LoRA costs every decoding step extra matmuls; on vLLM's CPU build beam search with an
adapter ran 7x slower than the bare model (``bench/engines.py``). A merged model has the base's
architecture and so its speed; what it gives up is serving many adapters from one engine, which
only pays on a GPU (multi-LoRA batches several adapters in one step).

    adapter_mode = "merged"  always merge (cached by base hash x adapter hash)
    adapter_mode = "lora"    per-request LoRA (vLLM multi-LoRA; max_lora_rank from the adapters)
    adapter_mode = "auto"    merge on CPU, LoRA on a GPU

Before an adapter is served it is checked against the base (``check_adapter_base``): the base it
names, where that directory is here, must have the served base's content hash, and every LoRA
factor's shape must fit the base's projections. A mismatch is :class:`AdapterMismatch`.
"""
from __future__ import annotations

import json
import logging
import re
import shutil
import struct
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from cmaq.artifacts import dir_hash
from cmaq.engines.tiny import DEFAULT_CACHE, publish_dir

log = logging.getLogger(__name__)

VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)
ADAPTER_MODES = ("lora", "merged", "auto")
_FACTOR = re.compile(r"layers\.(\d+)\..*?\.(\w+_proj)\.lora_([AB])\.weight$")


class AdapterMismatch(ValueError):
    """An adapter that cannot be served on this base (missing, or trained for another one)."""


def _adapter_config(adapter: str | Path) -> dict:
    path = Path(adapter) / "adapter_config.json"
    if not path.is_file():
        raise AdapterMismatch(f"{adapter}: not a PEFT adapter directory (no adapter_config.json)")
    return json.loads(path.read_text())


def adapter_rank(adapter: str | Path) -> int:
    """The LoRA rank ``r`` an adapter was trained with."""
    return int(_adapter_config(adapter)["r"])


def lora_rank_for(adapters) -> int:
    """The smallest rank size vLLM offers that holds every adapter (8 when there is none)."""
    need = max((adapter_rank(a) for a in adapters if a), default=8)
    for size in VLLM_LORA_RANKS:
        if size >= need:
            return size
    raise AdapterMismatch(f"LoRA rank {need} exceeds vLLM's largest ({VLLM_LORA_RANKS[-1]})")


def _tensor_shapes(safetensors_file: Path) -> dict[str, list[int]]:
    """Names and shapes from a safetensors header (8-byte length, then JSON), without reading tensors."""
    with open(safetensors_file, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(n))
    return {k: v["shape"] for k, v in header.items() if k != "__metadata__"}


def _projection_shapes(config: dict) -> dict[str, tuple[int, int]]:
    """(in, out) features of each Qwen2-family projection LoRA wraps."""
    hidden, inter = config["hidden_size"], config["intermediate_size"]
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or hidden // heads
    kv = config.get("num_key_value_heads", heads) * head_dim
    return {"q_proj": (hidden, heads * head_dim), "k_proj": (hidden, kv), "v_proj": (hidden, kv),
            "o_proj": (heads * head_dim, hidden), "gate_proj": (hidden, inter), "up_proj": (hidden, inter),
            "down_proj": (inter, hidden)}


def check_adapter_base(adapter: str | Path, base_dir: str | Path) -> None:
    """Raise :class:`AdapterMismatch` unless ``adapter`` was trained for the model in ``base_dir``."""
    cfg = _adapter_config(adapter)
    named = cfg.get("base_model_name_or_path") or ""
    if named and Path(named).is_dir() and (Path(named) / "config.json").is_file():
        theirs, ours = dir_hash(named), dir_hash(base_dir)
        if theirs != ours:
            raise AdapterMismatch(f"{adapter}: trained for another base ({named}, content {theirs}; "
                                  f"served base {base_dir}, content {ours})")
    weights = Path(adapter) / "adapter_model.safetensors"
    if not weights.is_file():
        raise AdapterMismatch(f"{adapter}: no adapter_model.safetensors")
    base = json.loads((Path(base_dir) / "config.json").read_text())
    shapes, layers = _projection_shapes(base), base["num_hidden_layers"]
    factors = 0
    for name, shape in _tensor_shapes(weights).items():
        m = _FACTOR.search(name)
        if m is None:
            continue
        layer, proj, ab = int(m.group(1)), m.group(2), m.group(3)
        d_in, d_out = shapes.get(proj, (None, None))
        fits = layer < layers and d_in is not None and (shape[1] == d_in if ab == "A" else shape[0] == d_out)
        if not fits:
            raise AdapterMismatch(f"{adapter}: trained for another base ({name} has shape {shape}, the served "
                                  f"base {base_dir} has {layers} layers and {proj} of {d_in} -> {d_out})")
        factors += 1
    if not factors:
        raise AdapterMismatch(f"{adapter}: no LoRA factors of the Qwen2 projections in adapter_model.safetensors")


def wants_merge(mode: str) -> bool:
    """Whether ``adapter_mode`` merges here: 'merged' always, 'lora' never, 'auto' unless a GPU serves."""
    if mode not in ADAPTER_MODES:
        raise ValueError(f"engine.adapter_mode: must be one of {', '.join(ADAPTER_MODES)}, got {mode!r}")
    if mode != "auto":
        return mode == "merged"
    import torch

    return not torch.cuda.is_available()


def merged_model_dir(base_dir: str | Path, adapter: str | Path, cache_dir: str | Path | None = None) -> Path:
    """The base with the adapter's LoRA weights merged in (PEFT ``merge_and_unload``), as a model
    directory with the base's tokenizer; built once per (base hash, adapter hash) and then reused."""
    check_adapter_base(adapter, base_dir)
    cache = Path(cache_dir or DEFAULT_CACHE)
    out = cache / f"merged-{dir_hash(base_dir)}-{dir_hash(adapter)}"
    if (out / "DONE").exists():
        return out
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="merged-", dir=cache))
    try:
        # float32 whatever the served dtype: the merge adds B @ A to W once, the engine casts later
        base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
        merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
        merged.save_pretrained(tmp, safe_serialization=True)
        AutoTokenizer.from_pretrained(base_dir).save_pretrained(tmp)
        generation = Path(base_dir) / "generation_config.json"
        if generation.is_file():
            shutil.copy(generation, tmp / "generation_config.json")
        (tmp / "cmaq_merged.json").write_text(json.dumps({"base": str(base_dir), "base_version": dir_hash(base_dir),
                                                          "adapter": str(adapter),
                                                          "adapter_version": dir_hash(adapter)}, indent=2))
        (tmp / "DONE").write_text("ok\n")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    publish_dir(tmp, out)
    log.info("merged %s into %s in %.1f s: %s", adapter, base_dir, time.perf_counter() - t0, out)
    return out


def serving_engine(cfg, base_dir: str, adapter: str | None):
    """The engine settings and the per-request adapter that serve ``adapter`` on ``base_dir`` under
    ``cfg.adapter_mode``: merged, the merged directory as the model and no adapter; LoRA, the base and
    the adapter. Either way the adapter is checked against the base first (:class:`AdapterMismatch`)."""
    if not adapter:
        return replace(cfg, model_dir=base_dir), None
    check_adapter_base(adapter, base_dir)
    if wants_merge(cfg.adapter_mode):
        return replace(cfg, model_dir=str(merged_model_dir(base_dir, adapter, cfg.merge_cache or None))), None
    return replace(cfg, model_dir=base_dir), adapter
