"""The two reward models: how each turns (content, query) into tensors, builds its trainable model,
scores without gradients, and is saved and loaded (base model + LoRA adapter + ``cmaq_rm.json``).

Expansion RM: a causal LM; the answer is the next token after the expansion prompt, "1" or "0";
r_exp = p("1") / (p("0") + p("1")) at that position.
CTR RM: the same backbone with a scalar head on the last token of title + shop + note + query.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from peft import LoraConfig, PeftModel
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from cmaq.artifacts import LORA_TARGETS
from cmaq.prompts import PromptLimits, ctr_input, expansion_prompt
from cmaq.shared_prefix import hidden_at, transformer_and_head
from training.distributed import runtime

META = "cmaq_rm.json"
ANSWERS = ("0", "1")


def _limits(max_len: int, extra: int):
    return PromptLimits(max_prompt_tokens=max_len - extra)


def answer_ids(tokenizer) -> tuple[int, int]:
    """Token ids of "0" and "1"; each must be one token or the RM cannot read its answer."""
    ids = []
    for a in ANSWERS:
        enc = tokenizer(a, add_special_tokens=False)["input_ids"]
        if len(enc) != 1:
            raise ValueError(f"the tokenizer splits {a!r} into {len(enc)} tokens; the expansion RM needs one")
        ids.append(enc[0])
    return ids[0], ids[1]


class ExpansionRM:
    """Encodes expansion prompts and reads the answer logits."""

    kind = "expansion"

    def __init__(self, model, tokenizer, max_len: int):
        self.model, self.tokenizer, self.max_len = model, tokenizer, max_len
        self.id0, self.id1 = answer_ids(tokenizer)

    def encode(self, item, query: str) -> list[int]:
        prompt = expansion_prompt(item, query, self.tokenizer, _limits(self.max_len, 1))
        return self.tokenizer(prompt, add_special_tokens=False)["input_ids"]

    def answer_logits(self, seqs: Sequence[list[int]], groups: Sequence | None = None):
        """Logits [B, V] at each prompt's last position: the distribution of the answer token.
        Sequences with the same ``groups`` key (one content's candidates) share their common prefix's
        forward pass."""
        transformer, lm_head = transformer_and_head(self.model, "lm_head")
        h = _last_hidden(transformer, seqs, groups, self.tokenizer.pad_token_id)
        return lm_head(h).float()

    def p_one(self, logits):
        """r_exp from answer logits [B, V]: softmax over the two answer tokens only."""
        pair = torch.stack([logits[:, self.id0], logits[:, self.id1]], dim=1)
        return torch.softmax(pair, dim=1)[:, 1]

    def score(self, items, queries, batch_size: int = 32) -> np.ndarray:
        return _batched(self, items, queries, batch_size,
                        lambda seqs, groups: self.p_one(self.answer_logits(seqs, groups)))


class CtrRM:
    """Encodes title + shop + note + query and reads the scalar head."""

    kind = "ctr"

    def __init__(self, model, tokenizer, max_len: int):
        self.model, self.tokenizer, self.max_len = model, tokenizer, max_len

    def encode(self, item, query: str) -> list[int]:
        text = ctr_input(item, query, self.tokenizer, _limits(self.max_len, 0))
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def rewards(self, seqs: Sequence[list[int]], groups: Sequence | None = None):
        """Scalar rewards [B] read at each sequence's last token (where the sequence classifier
        pools: texts never contain the pad id)."""
        transformer, head = transformer_and_head(self.model, "score")
        return head(_last_hidden(transformer, seqs, groups, self.tokenizer.pad_token_id))[:, 0].float()

    def score(self, items, queries, batch_size: int = 32) -> np.ndarray:
        return _batched(self, items, queries, batch_size, self.rewards)


def _last_hidden(transformer, seqs: Sequence[list[int]], groups: Sequence | None, pad_id: int):
    groups = range(len(seqs)) if groups is None else groups
    return hidden_at(transformer, seqs, groups, [[len(s) - 1] for s in seqs], pad_id, max_rows=max(1, len(seqs)))


def _batched(rm, items, queries, batch_size: int, fn) -> np.ndarray:
    """``fn(seqs, groups)`` over batches of about ``batch_size`` sequences; the candidates of one
    content stay in one batch so they share the content's prefix."""
    seqs = [rm.encode(it, q) for it, q in zip(items, queries)]
    keys = [it.get("content_id", id(it)) if isinstance(it, dict) else id(it) for it in items]
    members: dict = {}
    for i, k in enumerate(keys):
        members.setdefault(k, []).append(i)
    # Longest first keeps padding small; results go back to input order.
    order = [i for idx in sorted(members.values(), key=lambda idx: -len(seqs[idx[0]])) for i in idx]
    out = np.empty(len(seqs), dtype=np.float64)
    rm.model.eval()
    with torch.inference_mode():
        start = 0
        while start < len(order):
            stop = min(len(order), start + batch_size)
            while stop < len(order) and keys[order[stop]] == keys[order[stop - 1]]:
                stop += 1
            idx = order[start:stop]
            out[idx] = fn([seqs[i] for i in idx], [keys[i] for i in idx]).cpu().double().numpy()
            start = stop
    return out


# --------------------------------------------------------------------------- building and loading


def lora_config(kind: str, r: int, alpha: int, dropout: float):
    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=LORA_TARGETS,
                      task_type="CAUSAL_LM" if kind == "expansion" else "SEQ_CLS",
                      modules_to_save=None if kind == "expansion" else ["score"])


def base_model(kind: str, model_dir: str, dtype=None):
    """The backbone: a causal LM, or the same weights with a scalar head (new, trained with the LoRA)."""
    dtype = dtype or torch.float32
    if kind == "expansion":
        return AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
    return AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1, dtype=dtype)


def tokenizer_of(model_dir: str):
    tok = AutoTokenizer.from_pretrained(model_dir)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def save_rm(model, tokenizer, out_dir: Path, meta: dict) -> None:
    """The model, its tokenizer and ``cmaq_rm.json`` into ``out_dir`` (beside its metrics), written by the
    main process: each file under another name, renamed into place, ``cmaq_rm.json`` last (a directory
    without it is no reward model)."""
    rt = runtime()

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    rt.write_into(out_dir, write)
    rt.write_text(out_dir / META, json.dumps(meta, indent=2, default=str))


def read_meta(rm_dir: str | Path) -> dict:
    path = Path(rm_dir) / META
    if not path.exists():
        raise FileNotFoundError(f"{rm_dir}: not a trained reward model (no {META}); train one with "
                                f"`cmaq train rm-exp` or `cmaq train rm-ctr`")
    return json.loads(path.read_text())


def load_parts(rm_dir: str | Path, kind: str, device: str, dtype):
    meta = read_meta(rm_dir)
    if meta["kind"] != kind:
        raise ValueError(f"{rm_dir} is a {meta['kind']} reward model, not {kind}")
    if meta.get("finetune", "lora") == "full":
        model = base_model(kind, str(rm_dir), dtype)  # the directory holds every weight
    else:
        model = PeftModel.from_pretrained(base_model(kind, meta["base_model"], dtype), str(rm_dir))
        model = model.merge_and_unload()  # scoring only: one matmul per layer, not two
    model = model.to(device).eval()
    return model, tokenizer_of(str(rm_dir)), int(meta["max_len"])


class Ensemble:
    """K reward models of one kind (members trained from different seeds on bootstrap resamples);
    a single model is an ensemble of one. ``score`` is the members' mean; ``score_spread`` also
    returns their standard deviation (0 for one member)."""

    def __init__(self, members: Sequence, meta: dict | None = None):
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members, self.meta = list(members), meta or {}
        self.kind = self.members[0].kind

    def member_scores(self, items, queries, batch_size: int = 32) -> np.ndarray:
        """Every member's scores, [members, len(queries)]."""
        return np.stack([m.score(items, queries, batch_size) for m in self.members])

    def score_spread(self, items, queries, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
        scores = self.member_scores(items, queries, batch_size)
        return scores.mean(axis=0), scores.std(axis=0)

    def score(self, items, queries, batch_size: int = 32) -> np.ndarray:
        return self.score_spread(items, queries, batch_size)[0]


def member_dirs(rm_dir: str | Path) -> list[Path]:
    """The directories of an RM's members: its own when it is one model, else ``member-i/``."""
    meta = read_meta(rm_dir)
    return [Path(rm_dir) / m for m in meta["members"]] if "members" in meta else [Path(rm_dir)]


def _load_ensemble(rm_dir: str | Path, kind: str, cls, device: str, dtype) -> Ensemble:
    meta = read_meta(rm_dir)
    if meta["kind"] != kind:
        raise ValueError(f"{rm_dir} is a {meta['kind']} reward model, not {kind}")
    return Ensemble([cls(*load_parts(d, kind, device, dtype)) for d in member_dirs(rm_dir)], meta)


def load_expansion_rm(rm_dir: str | Path, device: str = "cpu", dtype=None) -> Ensemble:
    return _load_ensemble(rm_dir, "expansion", ExpansionRM, device, dtype)


def load_ctr_rm(rm_dir: str | Path, device: str = "cpu", dtype=None) -> Ensemble:
    return _load_ensemble(rm_dir, "ctr", CtrRM, device, dtype)
