"""The policy: base model + one LoRA adapter, how (content, query) becomes tokens, and the summed
log-probability of a query given its prompt — the quantity every preference loss is written in.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def encode(tokenizer, item, query: str, max_prompt_tokens: int) -> tuple[list[int], list[int]]:
    """(prompt ids, answer ids): the generation prompt the engines use, then " query" + end of text —
    exactly what the policy produces when it serves."""
    from cmaq.prompts import PromptLimits, generation_prompt

    prompt = generation_prompt(item, tokenizer, PromptLimits(max_prompt_tokens=max_prompt_tokens))
    p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    a_ids = tokenizer(" " + query, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return p_ids, a_ids


def sequence_logps(model, pairs: Sequence[tuple[list[int], list[int]]], pad_id: int):
    """Summed log-probabilities of each answer given its prompt, and the answers' lengths.

    pairs: B (prompt ids, answer ids). Returns (FloatTensor [B], LongTensor [B]); gradients flow
    when the model is trainable.
    """
    import torch

    width = max(len(p) + len(a) for p, a in pairs)
    ids = torch.full((len(pairs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(pairs), width), dtype=torch.long)
    answer = torch.zeros((len(pairs), width), dtype=torch.bool)
    for i, (p, a) in enumerate(pairs):
        ids[i, :len(p) + len(a)] = torch.tensor(p + a)
        mask[i, :len(p) + len(a)] = 1
        answer[i, len(p):len(p) + len(a)] = True
    device = next(model.parameters()).device
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits[:, :-1].float()
    targets = ids[:, 1:].to(device)
    token_logps = torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    on_answer = answer[:, 1:].to(device)
    return (token_logps * on_answer).sum(-1), on_answer.sum(-1)


def new_policy(model_dir: str, r: int, alpha: int, dropout: float = 0.0):
    """Base + a fresh LoRA adapter (what QSA trains)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from training.loop import default_device

    base = AutoModelForCausalLM.from_pretrained(model_dir).to(default_device())
    return get_peft_model(base, LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=LORA_TARGETS,
                                           task_type="CAUSAL_LM"))


def load_policy(model_dir: str, adapter: str | Path, trainable: bool = True):
    """Base + an existing adapter, its weights trainable (each CMAQ iteration continues the adapter)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from training.loop import default_device

    return PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir).to(default_device()),
                                     str(adapter), is_trainable=trainable)
