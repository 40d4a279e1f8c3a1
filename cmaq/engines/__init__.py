"""Generation engines: one interface (``beam``, ``sample``), a vLLM engine and a transformers engine.

    from cmaq.engines import get_engine
    engine = get_engine(cfg.engine)        # one per process, created on first use, then reused
    results = engine.beam(items, width=5, adapter="path/to/adapter")
"""
from __future__ import annotations

import threading

from cmaq.config import EngineConfig
from cmaq.engines.base import Candidate, Engine, GenResult

__all__ = ["Candidate", "Engine", "GenResult", "get_engine", "make_engine", "resolve_model_dir"]

_ENGINES: dict[tuple, Engine] = {}
_LOCK = threading.Lock()


def resolve_model_dir(cfg: EngineConfig) -> str:
    """The configured model directory, or the project's tiny model (built once, cached)."""
    if cfg.model_dir:
        return cfg.model_dir
    from cmaq.engines.tiny import build_tiny_model

    return str(build_tiny_model())


def make_engine(cfg: EngineConfig) -> Engine:
    """A new engine (prefer :func:`get_engine`: engines are expensive)."""
    if ":" in cfg.backend:  # an engine class of the user's: "package.module:Class", built as Class(cfg)
        import importlib

        module, _, name = cfg.backend.partition(":")
        return getattr(importlib.import_module(module), name)(cfg)
    model_dir = resolve_model_dir(cfg)
    if cfg.backend == "hf":
        from cmaq.engines.hf_engine import HFEngine

        return HFEngine(cfg, model_dir)
    from cmaq.engines.vllm_engine import VllmEngine

    return VllmEngine(cfg, model_dir)


def get_engine(cfg: EngineConfig) -> Engine:
    """The process's engine for this configuration: created on first use, reused for every batch."""
    key = tuple(sorted(vars(cfg).items()))
    with _LOCK:
        if key not in _ENGINES:
            _ENGINES[key] = make_engine(cfg)
        return _ENGINES[key]
