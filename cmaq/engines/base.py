"""The engine interface shared by the Spark job (beam search) and the training loop (sampling).

    engine.beam(items, width=5, adapter=None)              -> list[GenResult], one per item, in order
    engine.sample(items, k, temperature, seed, adapter=None) -> list[GenResult]

``adapter`` is a PEFT adapter directory chosen per call: one engine serves many adapters. A bad
item (empty, over-long, undecodable) comes back as a GenResult with an error; it never fails the
batch. A dead engine (a CUDA error, a crashed engine core: every later call would fail too) is not
a bad item: the engine raises :class:`EngineDead` instead, so its owner can rebuild it and redo the
batch. Every result names the model and adapter it came from by content hash.
"""
from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Protocol, Sequence

from cmaq.artifacts import dir_hash
from cmaq.config import EngineConfig
from cmaq.prompts import PromptLimits, generation_prompt

log = logging.getLogger(__name__)

# Error reasons (stable codes, also used by the pool's quarantine table).
EMPTY_ITEM = "empty_item"
PROMPT_TOO_LONG = "prompt_too_long"
ENGINE_ERROR = "engine_error"
BAD_ITEM = "bad_item"
ENGINE_CRASH = "engine_crash"  # the item killed the worker process on every attempt (jobs.generate)


class EngineDead(RuntimeError):
    """The engine itself failed, not one of the items: close it and build a new one."""


def engine_dead(engine: str, exc: BaseException) -> EngineDead:
    """The EngineDead an engine raises for ``exc`` (chain it: ``raise engine_dead(...) from exc``)."""
    return EngineDead(f"{engine} engine failed: {type(exc).__name__}: {str(exc)[:300]}")


def dead_engine_error(exc: BaseException) -> bool:
    """Whether an exception says the engine is gone whatever the input (vLLM's EngineDeadError, a
    CUDA error that poisons the context, a closed engine), by class name and message, so the check
    needs neither vllm nor torch imported."""
    if isinstance(exc, EngineDead) or type(exc).__name__ in ("EngineDeadError", "EngineGenerateError"):
        return True
    text = str(exc)
    return any(s in text for s in ("CUDA error", "engine core", "EngineCore", "Engine is dead", "CUBLAS_STATUS"))


@dataclass(frozen=True)
class Candidate:
    text: str           # the generated query, without the prompt or end-of-text token
    logprob: float      # cumulative log-probability of the generated tokens
    rank: int           # 0 = best beam (beam search) or draw order (sampling)


@dataclass
class GenResult:
    content_id: str
    candidates: list[Candidate] = field(default_factory=list)
    error: tuple[str, str] | None = None   # (reason, detail)
    model_version: str = ""
    adapter_version: str = ""

    @property
    def ok(self) -> bool:
        return self.error is None


class Engine(Protocol):
    def beam(self, items: Sequence[Mapping], width: int = 5, adapter: str | None = None) -> list[GenResult]: ...

    def sample(self, items: Sequence[Mapping], k: int, temperature: float, seed: int,
               adapter: str | None = None) -> list[GenResult]: ...


def request_seed(seed: int, content_id: str) -> int:
    """A per-request sampling seed: the same (seed, item) draws the same candidates in any batch."""
    return zlib.crc32(f"{seed}:{content_id}".encode("utf-8", "replace")) & 0x7FFFFFFF


class PromptBuilder:
    """Turns items into prompts within the token budget, or into an error result."""

    def __init__(self, tokenizer, cfg: EngineConfig):
        self.tokenizer = tokenizer
        self.limits = PromptLimits(max_prompt_tokens=cfg.max_model_len - cfg.max_new_tokens - 1)

    def requests(self, items: Sequence, model_version: str, adapter_version: str
                 ) -> tuple[list[GenResult], list[str], list[int]]:
        """One GenResult per item (errors filled in), the prompts of the good items, and the result
        slot each prompt belongs to."""
        results, prompts, slots = [], [], []
        for item in items:
            res = GenResult(content_id_of(item), model_version=model_version, adapter_version=adapter_version)
            prompt, error = self.build(item)
            if error:
                res.error = error
            else:
                prompts.append(prompt)
                slots.append(len(results))
            results.append(res)
        return results, prompts, slots

    def build(self, item: Mapping) -> tuple[str | None, tuple[str, str] | None]:
        try:
            if not isinstance(item, Mapping):
                return None, (BAD_ITEM, f"expected a mapping, got {type(item).__name__}")
            if not any(_text(item.get(k)) for k in ("title", "body", "shop_name")):
                return None, (EMPTY_ITEM, "no title, body or shop name")
            return generation_prompt(item, self.tokenizer, self.limits), None
        except ValueError as exc:
            return None, (PROMPT_TOO_LONG, str(exc)[:300])
        except Exception as exc:  # noqa: BLE001 - one bad item must not fail the batch
            return None, (BAD_ITEM, f"{type(exc).__name__}: {str(exc)[:300]}")


def _text(v) -> str:
    if v is None:
        return ""
    return v.strip() if isinstance(v, str) else str(v).strip()


def content_id_of(item) -> str:
    if isinstance(item, Mapping) and item.get("content_id") is not None:
        return str(item["content_id"])
    return ""


def adapter_version(adapter: str | None) -> str:
    if not adapter:
        return ""
    path = Path(adapter)
    if not (path / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{adapter}: not a PEFT adapter directory (no adapter_config.json)")
    return dir_hash(path)
