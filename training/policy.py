"""The policy: base model + one LoRA adapter, how (content, query) becomes tokens, and the summed
log-probability of a query given its prompt — the quantity every preference loss is written in.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Sequence

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

from cmaq.artifacts import LORA_TARGETS
from cmaq.config import to_toml
from cmaq.prompts import PromptLimits, generation_prompt
from cmaq.shared_prefix import hidden_at, transformer_and_head
from training.distributed import runtime
from training.loop import default_device


def encode(tokenizer, item, query: str, max_prompt_tokens: int) -> tuple[list[int], list[int]]:
    """(prompt ids, answer ids): the generation prompt the engines use, then " query" + end of text —
    exactly what the policy produces when it serves."""
    prompt = generation_prompt(item, tokenizer, PromptLimits(max_prompt_tokens=max_prompt_tokens))
    p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    a_ids = tokenizer(" " + query, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return p_ids, a_ids


def sequence_logps(model, pairs: Sequence[tuple[list[int], list[int]]], pad_id: int):
    """Summed log-probabilities of each answer given its prompt, and the answers' lengths.

    pairs: B (prompt ids, answer ids). Returns (FloatTensor [B], LongTensor [B]); gradients flow
    when the model is trainable. Answers to the same prompt (a preference pair) share its forward
    pass, and the LM head runs only where an answer token is predicted.
    """
    transformer, lm_head = transformer_and_head(model, "lm_head")
    seqs = [list(p) + list(a) for p, a in pairs]
    # Position j predicts token j + 1: from the prompt's last token to the answer's second-to-last.
    positions = [range(len(p) - 1, len(p) + len(a) - 1) for p, a in pairs]
    h = hidden_at(transformer, seqs, [tuple(p) for p, _ in pairs], positions, pad_id, max_rows=len(pairs))
    device = h.device
    targets = torch.tensor([t for _, a in pairs for t in a], dtype=torch.long, device=device)
    token_logps = torch.log_softmax(lm_head(h).float(), dim=-1).gather(-1, targets[:, None]).squeeze(-1)
    lengths = torch.tensor([len(a) for _, a in pairs], dtype=torch.long, device=device)
    owner = torch.repeat_interleave(torch.arange(len(pairs), device=device), lengths)
    sums = torch.zeros(len(pairs), dtype=token_logps.dtype, device=device).index_add(0, owner, token_logps)
    return sums, lengths


def new_policy(model_dir: str, r: int, alpha: int, dropout: float = 0.0):
    """Base + a fresh LoRA adapter (what QSA trains)."""
    base = AutoModelForCausalLM.from_pretrained(model_dir).to(default_device())
    return get_peft_model(base, LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=LORA_TARGETS,
                                           task_type="CAUSAL_LM"))


def load_policy(model_dir: str, adapter: str | Path, trainable: bool = True):
    """Base + an existing adapter, its weights trainable (each CMAQ iteration continues the adapter)."""
    return PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir).to(default_device()),
                                     str(adapter), is_trainable=trainable)


def save_policy(model, out: Path, cfg, model_dir: str, state_dict: dict | None = None) -> Path:
    """The adapter (PEFT format) and the run's config beside it, naming the base it was trained on;
    written by the main process. ``state_dict``: the full weights when the model's own are FSDP shards."""
    rt = runtime()
    rt.write(out / "adapter", lambda tmp: model.save_pretrained(tmp, state_dict=state_dict, is_main_process=rt.is_main))
    rt.write_text(out / "config.toml", to_toml(replace(cfg, model_dir=model_dir)))
    return out / "adapter"
