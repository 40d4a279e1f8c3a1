"""HFEngine: transformers ``generate`` with PEFT adapters, for machines without vLLM and as an
independent cross-check of the vLLM engine.

Beams: ``num_beams = num_return_sequences = width``, left padding, batched. Adapters are loaded once
each, by content hash, and switched per call; ``adapter=None`` runs the bare base model.
"""
from __future__ import annotations

import logging
from typing import Mapping, Sequence

from cmaq.config import EngineConfig
from cmaq.engines.base import ENGINE_ERROR, Candidate, GenResult, PromptBuilder, adapter_version, content_id_of, \
    request_seed

log = logging.getLogger(__name__)


class HFEngine:
    def __init__(self, cfg: EngineConfig, model_dir: str, device: str | None = None):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from cmaq.engines.tiny import dir_hash

        self.cfg = cfg
        self.model_dir = model_dir
        self.model_version = dir_hash(model_dir)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(cfg.dtype, "auto")
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.tokenizer.padding_side = "left"  # decoder-only batches pad on the left
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(self.device).eval()
        self._adapters: set[str] = set()
        self._prompts = PromptBuilder(self.tokenizer, cfg)

    # ------------------------------------------------------------------ adapters

    def _use_adapter(self, adapter: str | None) -> str:
        """Activate the adapter (loading it once) and return its version; '' for the bare base model."""
        if not adapter:
            return ""
        from peft import PeftModel

        version = adapter_version(adapter)
        if version not in self._adapters:
            if not isinstance(self.model, PeftModel):
                self.model = PeftModel.from_pretrained(self.model, adapter, adapter_name=version).eval()
            else:
                self.model.load_adapter(adapter, adapter_name=version)
            self._adapters.add(version)
        self.model.set_adapter(version)
        return version

    def _generate(self, prompts: list[str], adapter_active: bool, **kwargs):
        import contextlib

        import torch

        enc = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        no_adapter = (self.model.disable_adapter() if (not adapter_active and hasattr(self.model, "disable_adapter"))
                      else contextlib.nullcontext())
        with torch.no_grad(), no_adapter:
            out = self.model.generate(**enc, max_new_tokens=self.cfg.max_new_tokens, return_dict_in_generate=True,
                                      output_scores=True, pad_token_id=self.tokenizer.pad_token_id,
                                      eos_token_id=self.tokenizer.eos_token_id, **kwargs)
            scores = self.model.compute_transition_scores(
                out.sequences, out.scores, getattr(out, "beam_indices", None), normalize_logits=False)
        n_prompt = enc["input_ids"].shape[1]
        return out.sequences[:, n_prompt:], scores

    def _decode(self, tokens, scores) -> tuple[str, float]:
        import torch

        eos = self.tokenizer.eos_token_id
        ids = tokens.tolist()
        n = len(ids)
        for j, t in enumerate(ids):
            if t == eos:
                n = j + 1  # the end-of-text token's probability is part of the sequence's
                break
        s = scores[:n]
        logprob = float(torch.nan_to_num(s, neginf=0.0).sum())
        return self.tokenizer.decode(ids[:n], skip_special_tokens=True).strip(), logprob

    # ------------------------------------------------------------------ requests

    def _run(self, items, adapter, per_item: int, seeds: dict | None = None, **gen_kwargs) -> list[GenResult]:
        version = self._use_adapter(adapter)
        results, prompts, slots = self._prompts.requests(items, self.model_version, version)
        bs = self.cfg.hf_batch_size
        for start in range(0, len(prompts), bs):
            chunk, chunk_slots = prompts[start:start + bs], slots[start:start + bs]
            try:
                self._fill(results, chunk, chunk_slots, bool(version), per_item, seeds, gen_kwargs)
            except Exception as exc:  # noqa: BLE001 - retry one by one so only bad items fail
                log.warning("HF batch failed (%s); retrying item by item", exc)
                for p, s in zip(chunk, chunk_slots):
                    try:
                        self._fill(results, [p], [s], bool(version), per_item, seeds, gen_kwargs)
                    except Exception as exc1:  # noqa: BLE001
                        results[s].error = (ENGINE_ERROR, f"{type(exc1).__name__}: {str(exc1)[:300]}")
        return results

    def _fill(self, results, prompts, slots, adapter_active, per_item, seeds, gen_kwargs) -> None:
        if seeds is not None:  # sampling: one call per item so its seed alone decides its draws
            import torch

            for p, s in zip(prompts, slots):
                torch.manual_seed(seeds[s])
                tokens, scores = self._generate([p], adapter_active, **gen_kwargs)
                results[s].candidates = [Candidate(*self._decode(tokens[r], scores[r]), r) for r in range(len(tokens))]
            return
        tokens, scores = self._generate(prompts, adapter_active, **gen_kwargs)
        for i, s in enumerate(slots):
            rows = range(i * per_item, (i + 1) * per_item)
            results[s].candidates = [Candidate(*self._decode(tokens[r], scores[r]), rank)
                                     for rank, r in enumerate(rows)]

    def beam(self, items: Sequence[Mapping], width: int = 5, adapter: str | None = None) -> list[GenResult]:
        return self._run(items, adapter, width, num_beams=width, num_return_sequences=width, do_sample=False,
                         early_stopping=True, length_penalty=self.cfg.length_penalty)

    def sample(self, items: Sequence[Mapping], k: int, temperature: float, seed: int,
               adapter: str | None = None) -> list[GenResult]:
        seeds = {i: request_seed(seed, content_id_of(it)) for i, it in enumerate(items)}
        return self._run(items, adapter, k, do_sample=True, temperature=temperature, top_k=0, top_p=1.0,
                         num_return_sequences=k, seeds=seeds)
