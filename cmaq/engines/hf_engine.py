"""HFEngine: transformers ``generate`` with PEFT adapters, for machines without vLLM and as an
independent cross-check of the vLLM engine.

Beams: ``num_beams = num_return_sequences = width``, left padding, batched. Adapters are loaded once
each, by content hash, and switched per call; ``adapter=None`` runs the bare base model.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Mapping, Sequence

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from cmaq.artifacts import dir_hash
from cmaq.config import EngineConfig
from cmaq.engines.base import ENGINE_ERROR, Candidate, GenResult, PromptBuilder, adapter_version, \
    content_id_of, dead_engine_error, engine_dead, request_seed

log = logging.getLogger(__name__)


class HFEngine:
    def __init__(self, cfg: EngineConfig, model_dir: str, device: str | None = None):
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
        version = adapter_version(adapter)
        if version not in self._adapters:
            if not isinstance(self.model, PeftModel):
                self.model = PeftModel.from_pretrained(self.model, adapter, adapter_name=version).eval()
            else:
                self.model.load_adapter(adapter, adapter_name=version)
            self._adapters.add(version)
        self.model.set_adapter(version)
        return version

    def _generate(self, prompts: list[str], adapter_active: bool, scores_only: bool = True, repeat: int = 1,
                  **kwargs):
        """New tokens per row and, per row and step, the transition scores (``scores_only``) or the raw
        logits (a tuple over steps of (rows, vocab) tensors). ``repeat``: rows per prompt, sharing one
        prefill of the prompt (its key/value cache is copied, not recomputed, for each row)."""
        enc = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        no_adapter = (self.model.disable_adapter() if (not adapter_active and hasattr(self.model, "disable_adapter"))
                      else contextlib.nullcontext())
        with torch.no_grad(), no_adapter:
            n_prompt = enc["input_ids"].shape[1]
            if repeat > 1:
                enc, kwargs["past_key_values"] = self._shared_prefill(enc, repeat, expand_inputs=True)
            elif kwargs.get("num_beams", 1) > 1 and self.cfg.beam_shared_prefill:
                # Beam search expands its inputs itself (not a cache it is given): repeat the cache only.
                enc, kwargs["past_key_values"] = self._shared_prefill(enc, kwargs["num_beams"], expand_inputs=False)
            out = self.model.generate(**enc, max_new_tokens=self.cfg.max_new_tokens, return_dict_in_generate=True,
                                      output_scores=scores_only, pad_token_id=self.tokenizer.pad_token_id,
                                      eos_token_id=self.tokenizer.eos_token_id, **kwargs)
            if not scores_only:
                return out.sequences[:, n_prompt:], out.logits
            scores = self.model.compute_transition_scores(
                out.sequences, out.scores, getattr(out, "beam_indices", None), normalize_logits=False)
        return out.sequences[:, n_prompt:], scores

    def _shared_prefill(self, enc, repeat: int, expand_inputs: bool):
        """The cache of every prompt token but the last, computed once and repeated ``repeat`` times;
        generate then runs from the last prompt token. Sampling k queries from a 450-token prompt
        otherwise spends most of its time prefilling the same prompt k times."""
        ids, mask = enc["input_ids"], enc["attention_mask"]
        positions = (mask.cumsum(-1) - 1).clamp(min=0)   # left padding: what generate itself would use
        cache = self.model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=positions[:, :-1],
                           use_cache=True).past_key_values
        cache.batch_repeat_interleave(repeat)
        if not expand_inputs:
            return {"input_ids": ids, "attention_mask": mask}, cache
        return {"input_ids": ids.repeat_interleave(repeat, 0), "attention_mask": mask.repeat_interleave(repeat, 0)}, cache

    def _decode(self, tokens, scores) -> tuple[str, float]:
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
                if dead_engine_error(exc) or not self.alive():
                    raise engine_dead("transformers", exc) from exc
                log.warning("HF batch failed (%s); retrying item by item", exc)
                for p, s in zip(chunk, chunk_slots):
                    try:
                        self._fill(results, [p], [s], bool(version), per_item, seeds, gen_kwargs)
                    except Exception as exc1:  # noqa: BLE001
                        if dead_engine_error(exc1):
                            raise engine_dead("transformers", exc1) from exc1
                        results[s].error = (ENGINE_ERROR, f"{type(exc1).__name__}: {str(exc1)[:300]}")
        return results

    def alive(self) -> bool:
        """A one-token forward pass: False when the model (its device context) no longer runs at all."""
        try:
            with torch.no_grad():
                self.model(input_ids=torch.tensor([[self.tokenizer.eos_token_id or 0]], device=self.device))
            return True
        except Exception:  # noqa: BLE001 - any failure here means the engine, not an item, is broken
            return False

    def _fill(self, results, prompts, slots, adapter_active, per_item, seeds, gen_kwargs) -> None:
        if seeds is not None:
            self._fill_sampled(results, prompts, slots, adapter_active, per_item, seeds, gen_kwargs)
            return
        tokens, scores = self._generate(prompts, adapter_active, **gen_kwargs)
        for i, s in enumerate(slots):
            rows = range(i * per_item, (i + 1) * per_item)
            results[s].candidates = [Candidate(*self._decode(tokens[r], scores[r]), rank)
                                     for rank, r in enumerate(rows)]

    def _fill_sampled(self, results, prompts, slots, adapter_active, per_item, seeds, gen_kwargs) -> None:
        """Sampling, batched, yet each item's draws depend on its own seed only (not on the batch).

        Every (item, draw) row gets its own torch.Generator; a logits processor adds that row's Gumbel
        noise to logits / T and decoding takes the argmax — the Gumbel-max trick, an exact sample from
        softmax(logits / T). transformers' own sampling would draw every row from one global RNG, so an
        item's queries would change with the other items in its batch. Log-probabilities reported are
        the model's own (temperature 1) of the drawn tokens.
        """
        row_seeds = [seeds[s] * 1009 + r for s in slots for r in range(per_item)]
        gumbel = _RowGumbel(row_seeds, float(gen_kwargs.get("temperature", 1.0)))
        tokens, logits = self._generate(prompts, adapter_active, do_sample=False, num_beams=1, repeat=per_item,
                                        logits_processor=[gumbel], output_logits=True, scores_only=False)
        steps = torch.stack(logits, dim=1).float().log_softmax(-1)          # (rows, steps, vocab)
        logps = steps.gather(-1, tokens[:, :steps.shape[1]].unsqueeze(-1)).squeeze(-1)
        for i, s in enumerate(slots):
            results[s].candidates = [Candidate(*self._decode(tokens[r], logps[r]), rank)
                                     for rank, r in enumerate(range(i * per_item, (i + 1) * per_item))]

    def beam(self, items: Sequence[Mapping], width: int = 5, adapter: str | None = None) -> list[GenResult]:
        return self._run(items, adapter, width, num_beams=width, num_return_sequences=width, do_sample=False,
                         early_stopping=True, length_penalty=self.cfg.length_penalty)

    def sample(self, items: Sequence[Mapping], k: int, temperature: float, seed: int,
               adapter: str | None = None) -> list[GenResult]:
        if temperature <= 0:
            raise ValueError(f"sampling temperature must be > 0, got {temperature}")
        seeds = {i: request_seed(seed, content_id_of(it)) for i, it in enumerate(items)}
        return self._run(items, adapter, k, temperature=temperature, seeds=seeds)


class _RowGumbel:
    """Logits processor: logits / T plus Gumbel(0, 1) noise drawn from each row's own generator."""

    def __init__(self, row_seeds: list[int], temperature: float):
        self.temperature = temperature
        self.generators = [torch.Generator().manual_seed(int(s)) for s in row_seeds]

    def __call__(self, input_ids, scores):
        if scores.shape[0] != len(self.generators):
            raise ValueError(f"{scores.shape[0]} rows but {len(self.generators)} generators")
        u = torch.stack([torch.rand(scores.shape[1], generator=g) for g in self.generators]).to(scores.device)
        noise = -torch.log(-torch.log(u.clamp(1e-20, 1.0 - 1e-7)))
        return scores.float() / self.temperature + noise
