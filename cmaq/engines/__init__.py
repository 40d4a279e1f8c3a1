"""Generation engines: one interface (``beam``, ``sample``), a vLLM engine and a transformers engine.

    from cmaq.engines import get_engine
    engine = get_engine(cfg.engine)        # one per process, created on first use, then reused
    results = engine.beam(items, width=5, adapter="path/to/adapter")
"""
from __future__ import annotations

import importlib
import threading

from cmaq.config import EngineConfig, ModelConfig
from cmaq.engines.base import Candidate, Engine, EngineDead, GenResult
from cmaq.engines.task_model import task_model_dir
from cmaq.engines.tiny import build_tiny_model

__all__ = ["Candidate", "Engine", "EngineDead", "GenResult", "base_model_dir", "evict_engine", "get_engine",
           "make_engine"]

_ENGINES: dict[tuple, Engine] = {}
_LOCK = threading.Lock()


def base_model_dir(model: ModelConfig | None, override: str = "") -> str:
    """The base model directory a section uses: its own ``model_dir`` override, else ``model.base_dir``,
    else the project's own model ``model.factory`` names (the tiny model, built once and cached, or the
    committed task model). The one place the base model is resolved."""
    if override:
        return override
    if model is not None and model.base_dir:
        return model.base_dir
    if model is not None and model.factory == "task":
        return str(task_model_dir())
    return str(build_tiny_model())


def make_engine(cfg: EngineConfig) -> Engine:
    """A new engine (prefer :func:`get_engine`: engines are expensive)."""
    if ":" in cfg.backend:  # an engine class of the user's: "package.module:Class", built as Class(cfg)
        module, _, name = cfg.backend.partition(":")
        return getattr(importlib.import_module(module), name)(cfg)
    model_dir = base_model_dir(None, cfg.model_dir)
    # The engine modules import torch / vllm when an engine is built; the ground imports without them.
    if cfg.backend == "hf":
        from cmaq.engines.hf_engine import HFEngine

        return HFEngine(cfg, model_dir)
    from cmaq.engines.vllm_engine import VllmEngine

    return VllmEngine(cfg, model_dir)


def _key(cfg: EngineConfig) -> tuple:
    return tuple(sorted(vars(cfg).items()))


def get_engine(cfg: EngineConfig, exclusive: bool = False) -> Engine:
    """The process's engine for this configuration: created on first use, reused for every batch.
    A build that raises caches nothing, so the next call (or Spark's next task attempt) tries afresh.
    ``exclusive``: close the process's engines of other configurations first, so a worker that moves
    on to another model (the next A/B arm's merged adapter) holds one engine's memory, not two."""
    with _LOCK:
        others = [k for k in _ENGINES if k != _key(cfg)] if exclusive else []
        closing = [_ENGINES.pop(k) for k in others]
    for engine in closing:
        _close(engine)
    with _LOCK:
        if _key(cfg) not in _ENGINES:
            _ENGINES[_key(cfg)] = make_engine(cfg)
        return _ENGINES[_key(cfg)]


def _close(engine: Engine) -> None:
    if hasattr(engine, "close"):
        try:
            engine.close()
        except Exception:  # noqa: BLE001 - a dead engine may fail to close; it is dropped either way
            pass


def evict_engine(cfg: EngineConfig) -> bool:
    """Drop the process's engine for this configuration (a dead one) and close it; the next
    :func:`get_engine` builds a new one. Returns whether there was one."""
    with _LOCK:
        engine = _ENGINES.pop(_key(cfg), None)
    if engine is not None:
        _close(engine)
    return engine is not None
