"""VllmEngine: vLLM's ``LLM`` (GPU build or the CPU build), one per process, created on first use.

``vllm`` is imported here, lazily, only where the engine runs (Spark executors, the training loop),
never at module import of the job's driver. Each request carries its own ``LoRARequest``, so one
engine serves any number of adapters (vLLM's multi-LoRA).
"""
from __future__ import annotations

import gc
import logging
import os
import zlib
from typing import Mapping, Sequence

from cmaq.artifacts import dir_hash
from cmaq.config import EngineConfig
from cmaq.engines.base import ENGINE_ERROR, Candidate, GenResult, PromptBuilder, adapter_version, \
    dead_engine_error, engine_dead, request_seed
from cmaq.engines.merged import adapter_rank, lora_rank_for

log = logging.getLogger(__name__)


class VllmEngine:
    def __init__(self, cfg: EngineConfig, model_dir: str):
        self.cfg = cfg
        self.model_dir = model_dir
        self._llm = None
        self._prompts: PromptBuilder | None = None
        self._loras: dict[str, object] = {}
        self._max_rank = 0

        self.model_version = dir_hash(model_dir)

    # ------------------------------------------------------------------ lifecycle

    def _engine(self, adapter: str | None = None):
        if self._llm is not None and adapter and not self.cfg.max_lora_rank and \
                adapter_rank(adapter) > self._max_rank:
            # max_lora_rank 0 follows the adapters: one of a larger rank than the engine was built
            # for is served by an engine rebuilt for it (once per larger rank)
            log.info("rebuilding the vLLM engine for LoRA rank %d (was %d)", adapter_rank(adapter), self._max_rank)
            self.close()
            self._loras.clear()
        if self._llm is None:
            # vLLM's CPU build forks workers; spawn keeps them clear of the parent's threads (Spark, torch).
            os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
            from vllm import LLM

            c = self.cfg
            # 0: the adapter's rank (8 without one); a set rank refuses larger adapters in _lora
            self._max_rank = c.max_lora_rank or max(self._max_rank, lora_rank_for([adapter]))
            self._llm = LLM(
                model=self.model_dir, tokenizer=self.model_dir, dtype=c.dtype, max_model_len=c.max_model_len,
                gpu_memory_utilization=c.gpu_memory_utilization, enforce_eager=c.enforce_eager,
                enable_lora=True, max_lora_rank=self._max_rank, max_loras=c.max_loras,
                tensor_parallel_size=c.tensor_parallel_size, seed=c.seed,
                enable_chunked_prefill=c.chunked_prefill, max_num_batched_tokens=max(c.max_model_len, 8192),
                **({"distributed_executor_backend": c.distributed_executor_backend}
                   if c.distributed_executor_backend else {}))
            self._prompts = PromptBuilder(self._llm.get_tokenizer(), c)
            log.info("vLLM engine ready: %s (model %s)", self.model_dir, self.model_version)
        return self._llm

    def close(self) -> None:
        """Shut the engine's worker processes down now rather than at interpreter exit."""
        if self._llm is not None:
            engine_core = getattr(getattr(self._llm, "llm_engine", None), "engine_core", None)
            if engine_core is not None and hasattr(engine_core, "shutdown"):
                engine_core.shutdown()
            self._llm = None
            gc.collect()

    def _lora(self, adapter: str | None):
        if not adapter:
            return None, ""
        version = adapter_version(adapter)
        if version not in self._loras:
            from vllm.lora.request import LoRARequest

            if adapter_rank(adapter) > self._max_rank:
                raise ValueError(f"{adapter}: LoRA rank {adapter_rank(adapter)} exceeds this engine's "
                                 f"max_lora_rank {self._max_rank}; set engine.max_lora_rank")

            # A stable positive id per adapter content: the same adapter is the same LoRA slot.
            lora_id = (zlib.crc32(version.encode()) & 0x7FFFFFFF) or 1
            self._loras[version] = LoRARequest(lora_name=version, lora_int_id=lora_id, lora_path=str(adapter))
        return self._loras[version], version

    # ------------------------------------------------------------------ requests

    def _prepare(self, items: Sequence[Mapping], adapter: str | None):
        self._engine(adapter)
        lora, aversion = self._lora(adapter)
        results, prompts, slots = self._prompts.requests(items, self.model_version, aversion)
        return results, prompts, slots, lora

    def beam(self, items: Sequence[Mapping], width: int = 5, adapter: str | None = None) -> list[GenResult]:
        from vllm.sampling_params import BeamSearchParams

        results, prompts, slots, lora = self._prepare(items, adapter)
        if not prompts:
            return results
        tok = self._llm.get_tokenizer()
        params = BeamSearchParams(beam_width=width, max_tokens=self.cfg.max_new_tokens,
                                  length_penalty=self.cfg.length_penalty)
        token_prompts = [{"prompt_token_ids": tok(p, add_special_tokens=False)["input_ids"]} for p in prompts]

        def run(batch):
            return self._llm.beam_search(batch, params, lora_request=lora)

        for slot, prompt, out in zip(slots, token_prompts, self._guarded(run, token_prompts, slots, results)):
            if out is None:
                continue
            n_prompt = len(prompt["prompt_token_ids"])
            results[slot].candidates = [
                Candidate(tok.decode(seq.tokens[n_prompt:], skip_special_tokens=True).strip(), float(seq.cum_logprob), r)
                for r, seq in enumerate(out.sequences[:width])]
        return results

    def sample(self, items: Sequence[Mapping], k: int, temperature: float, seed: int,
               adapter: str | None = None) -> list[GenResult]:
        from vllm import SamplingParams

        results, prompts, slots, lora = self._prepare(items, adapter)
        if not prompts:
            return results
        # top_k/top_p off: the method samples from the full distribution at high temperature.
        params = [SamplingParams(n=k, temperature=temperature, top_p=1.0, top_k=-1, max_tokens=self.cfg.max_new_tokens,
                                 seed=request_seed(seed, results[s].content_id), logprobs=0) for s in slots]

        def run(batch, batch_slots=None):
            idx = [slots.index(s) for s in (batch_slots or slots)]
            return self._llm.generate(batch, [params[i] for i in idx], lora_request=lora, use_tqdm=False)

        for slot, out in zip(slots, self._guarded(run, prompts, slots, results, pass_slots=True)):
            if out is None:
                continue
            results[slot].candidates = [
                Candidate(o.text.strip(), float(o.cumulative_logprob or 0.0), r) for r, o in enumerate(out.outputs)]
        return results

    def alive(self) -> bool:
        """One token from a one-token prompt: False when the engine no longer serves anything."""
        from vllm import SamplingParams

        try:
            self._llm.generate([{"prompt_token_ids": [0]}], SamplingParams(max_tokens=1), use_tqdm=False)
            return True
        except Exception:  # noqa: BLE001 - any failure here means the engine, not an item, is broken
            return False

    def _guarded(self, run, batch, slots, results, pass_slots: bool = False):
        """Run the whole batch. If it raises, a dead engine (the error says so, or a one-token probe
        fails too) raises EngineDead for the owner to rebuild it; otherwise the items are run one by
        one so only the bad ones fail."""
        try:
            return run(batch, slots) if pass_slots else run(batch)
        except Exception as exc:  # noqa: BLE001
            if dead_engine_error(exc) or not self.alive():
                raise engine_dead("vLLM", exc) from exc
            log.warning("vLLM batch of %d failed (%s); retrying item by item", len(batch), exc)
        outs = []
        for slot, one in zip(slots, batch):
            try:
                outs.append((run([one], [slot]) if pass_slots else run([one]))[0])
            except Exception as exc:  # noqa: BLE001
                if dead_engine_error(exc):
                    raise engine_dead("vLLM", exc) from exc
                results[slot].error = (ENGINE_ERROR, f"{type(exc).__name__}: {str(exc)[:300]}")
                outs.append(None)
        return outs
