"""Tiny-model factory: a small Qwen2 causal LM and a byte-level BPE tokenizer, built here.

Nothing is downloaded. The tokenizer is trained with ``tokenizers`` on world notes and queries; the
model (a few hundred thousand to a few million parameters, per :class:`TinyModelConfig`) is
pretrained briefly on the same text so it speaks the world's language — notes, and lists of
query-like phrases — without ever seeing a note followed by its query. The task comes from SFT
later, which keeps "zero-shot" and "style-aligned" meaningfully different.

The factory also trains a **test adapter**: a LoRA taught, for a few steps, a style the base model
never produces — a fixed suffix, "nearby" / 附近 (a model this size cannot reliably copy a field such
as the district out of the prompt) — so adapter plumbing is tested with an adapter whose effect shows.

Results are cached under ``cache_dir/<content hash>``: the hash covers the configuration and this
file's source, so tests and the demo build each model once and a change rebuilds it. torch,
transformers, tokenizers and peft are imported inside the builders: the core installs without the
``train`` extra, and a cached model is found without them.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import random
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from cmaq import prompts
from cmaq.artifacts import LORA_TARGETS, dir_hash
from cmaq.prompts import PromptLimits, generation_prompt
from cmaq.world.content import make_item
from cmaq.world.grammar import grammar_queries

log = logging.getLogger(__name__)

EOS = "<|endoftext|>"
DEFAULT_CACHE = Path(os.environ.get("CMAQ_CACHE", Path(__file__).resolve().parents[2] / ".cache" / "cmaq"))


@dataclass(frozen=True)
class TinyModelConfig:
    """Sizes and budgets of the tiny model; every field is part of the cache key."""

    world_seed: int = 101          # corpus items come from this world seed (not the evaluation worlds)
    corpus_items: int = 3000
    vocab_size: int = 2048
    hidden_size: int = 128
    intermediate_size: int = 512
    num_layers: int = 2
    num_heads: int = 2             # head_dim 64: supported by every attention backend we run
    num_kv_heads: int = 1
    max_position_embeddings: int = 1024
    pretrain_steps: int = 300
    batch_size: int = 16
    seq_len: int = 256
    lr: float = 3e-3
    seed: int = 0
    # "mixed": query lists of 12 queries drawn from all notes; "per_note": each note's own queries as
    # one list, so a name recurs within a document and pretraining rewards copying it (still no note
    # followed by its query: the list stands alone)
    query_lists: str = "mixed"
    # the test adapter
    adapter_items: int = 600
    adapter_steps: int = 300
    adapter_rank: int = 8
    adapter_lr: float = 3e-3
    adapter_max_prompt_tokens: int = 480

    def __post_init__(self) -> None:
        if self.query_lists not in ("mixed", "per_note"):
            raise ValueError(f"query_lists must be 'mixed' or 'per_note', got {self.query_lists!r}")


def content_hash(cfg: TinyModelConfig, *extra: str) -> str:
    h = hashlib.sha256(json.dumps(dataclasses.asdict(cfg), sort_keys=True).encode())
    h.update(Path(__file__).read_bytes())
    for e in extra:
        h.update(e.encode())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------- corpus


def world_items(seed: int, n: int):
    rng = random.Random()
    out = []
    for i in range(n):
        it = make_item(seed, i, 0.4, 0, rng)
        out.append((it, grammar_queries(it, rng)))
    return out


def corpus_texts(cfg: TinyModelConfig) -> list[str]:
    """Notes on their own, and queries in lists on their own: the world's language, not the task."""
    texts = []
    rng = random.Random(cfg.seed)
    items = world_items(cfg.world_seed, cfg.corpus_items)
    for it, grammar in items:
        texts.append(f"{it.title}\n{it.shop_name} · {it.shop_info}\n{it.body}")
    if cfg.query_lists == "per_note":
        for _, g in items:
            queries = [q for q, _ in g]
            rng.shuffle(queries)
            texts.append("\n".join(queries))
    else:
        queries = [q for _, g in items for q, _ in g]
        rng.shuffle(queries)
        for i in range(0, len(queries), 12):
            texts.append("\n".join(queries[i:i + 12]))
    rng.shuffle(texts)
    return texts


def prompt_vocabulary() -> list[str]:
    """The prompts' fixed wording, so the tokenizer has merges for it (vocabulary, not task data)."""
    words = [*prompts.GEN_INSTRUCTION.values(), *prompts.EXP_INSTRUCTION.values(),
             " ".join(w for labels in prompts.LABELS.values() for w in labels), prompts.NOTE_OPEN, prompts.NOTE_CLOSE]
    return words * 50


# --------------------------------------------------------------------------- building


def build_tokenizer(texts: list[str], vocab_size: int, out_dir: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS, bos_token=EOS,
                                   unk_token=None, model_max_length=1024)
    fast.save_pretrained(out_dir)
    return fast


def pretrain(model, tokenizer, texts: list[str], cfg: TinyModelConfig) -> list[float]:
    import torch

    ids: list[int] = []
    for t in texts:
        ids.extend(tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id])
    data = torch.tensor(ids, dtype=torch.long)
    g = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.pretrain_steps, pct_start=0.1)
    model.train()
    losses = []
    for step in range(cfg.pretrain_steps):
        starts = torch.randint(0, len(data) - cfg.seq_len - 1, (cfg.batch_size,), generator=g)
        batch = torch.stack([data[s:s + cfg.seq_len] for s in starts.tolist()])
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
        losses.append(float(loss))
        if step % 50 == 0 or step == cfg.pretrain_steps - 1:
            log.info("tiny model pretraining step %d/%d loss %.3f", step + 1, cfg.pretrain_steps, float(loss))
    model.eval()
    return losses


def new_model(cfg: TinyModelConfig, tokenizer):
    """A freshly initialised Qwen2 of ``cfg``'s sizes over ``tokenizer``'s vocabulary."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    return Qwen2ForCausalLM(Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
        max_position_embeddings=cfg.max_position_embeddings, tie_word_embeddings=True,
        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id,
        rope_theta=10000.0, torch_dtype="float32"))


def build_tiny_model(cfg: TinyModelConfig = TinyModelConfig(), cache_dir: str | Path | None = None) -> Path:
    """Directory of the tiny base model (config, safetensors, tokenizer), built once per content hash."""
    cache = Path(cache_dir or DEFAULT_CACHE)
    out = cache / f"tiny-qwen2-{content_hash(cfg)}"
    if (out / "DONE").exists():
        return out
    import torch

    torch.manual_seed(cfg.seed)
    t0 = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="tiny-", dir=_ensure(cache)))
    texts = corpus_texts(cfg)
    tokenizer = build_tokenizer(texts + prompt_vocabulary(), cfg.vocab_size, tmp)
    model = new_model(cfg, tokenizer)
    losses = pretrain(model, tokenizer, texts, cfg)
    model.save_pretrained(tmp, safe_serialization=True)
    model.generation_config.save_pretrained(tmp)
    params = sum(p.numel() for p in model.parameters())
    (tmp / "cmaq_tiny.json").write_text(json.dumps({
        "config": dataclasses.asdict(cfg), "parameters": params, "final_loss": losses[-1],
        "first_loss": losses[0], "seconds": round(time.perf_counter() - t0, 1)}, indent=2))
    (tmp / "DONE").write_text("ok\n")
    publish_dir(tmp, out)
    log.info("tiny model (%d parameters) built in %.0f s: %s", params, time.perf_counter() - t0, out)
    return out


def build_random_backbone(out: str | Path, hidden: int, layers: int, seed: int = 0,
                          tokenizer_from: str | Path | None = None) -> Path:
    """A random-initialised Qwen2 of ``layers`` × ``hidden`` with the tiny model's tokenizer (heads of 64,
    4 query heads per key/value head), written to ``out``. Nothing is pretrained: QSA teaches it the task."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    out = Path(out)
    if (out / "DONE").exists():
        return out
    source = Path(tokenizer_from or build_tiny_model())
    tokenizer = AutoTokenizer.from_pretrained(source)
    heads = max(1, hidden // 64)
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=3 * hidden, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=max(1, heads // 4), max_position_embeddings=1024,
        tie_word_embeddings=True, bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.eos_token_id, rope_theta=10000.0))
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    model.generation_config.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    params = sum(p.numel() for p in model.parameters())
    (tmp / "cmaq_tiny.json").write_text(json.dumps({"random_init": True, "hidden": hidden, "layers": layers,
                                                    "parameters": params, "seed": seed}, indent=2))
    (tmp / "DONE").write_text("ok\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    log.info("random backbone (%d parameters): %s", params, out)
    return out


def _ensure(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def publish_dir(tmp: Path, out: Path) -> None:
    """Rename into place; if another process won the race, keep theirs."""
    try:
        tmp.rename(out)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------- the test adapter


ADAPTER_SUFFIX = {"en": " nearby", "zh": "附近"}


def adapter_style_answer(item, query: str) -> str:
    """The test adapter's style: a query that ends with "nearby" (附近 in Chinese). The base model
    never answers like that, and a model this small learns a fixed suffix reliably, whereas copying
    the note's district out of the prompt is beyond it."""
    return f"{query}{ADAPTER_SUFFIX[item.lang]}"


def has_adapter_style(text: str) -> bool:
    return text.rstrip().endswith(tuple(s.strip() for s in ADAPTER_SUFFIX.values()))


def build_test_adapter(cfg: TinyModelConfig = TinyModelConfig(), cache_dir: str | Path | None = None) -> Path:
    """A LoRA adapter (PEFT directory) on the tiny model that makes answers end with "nearby" / 附近."""
    base = build_tiny_model(cfg, cache_dir)
    cache = Path(cache_dir or DEFAULT_CACHE)
    out = cache / f"test-adapter-{content_hash(cfg, 'adapter', dir_hash(base))}"
    if (out / "DONE").exists():
        return out
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer


    torch.manual_seed(cfg.seed)
    tok = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, torch_dtype=torch.float32)
    lora = LoraConfig(r=cfg.adapter_rank, lora_alpha=2 * cfg.adapter_rank, lora_dropout=0.0, task_type="CAUSAL_LM",
                      target_modules=LORA_TARGETS)
    model = get_peft_model(model, lora)
    limits = PromptLimits(max_prompt_tokens=cfg.adapter_max_prompt_tokens)
    rng = random.Random(cfg.seed)
    examples = []
    for it, grammar in world_items(cfg.world_seed + 1, cfg.adapter_items):
        q = rng.choice([q for q, kind in grammar if kind in ("entity", "expansion", "action")])
        prompt = generation_prompt(it.public(), tok, limits)
        p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        a_ids = tok(" " + adapter_style_answer(it, q), add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        examples.append((p_ids, a_ids))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.adapter_lr)
    model.train()
    for step in range(cfg.adapter_steps):
        batch = [examples[rng.randrange(len(examples))] for _ in range(8)]
        width = max(len(p) + len(a) for p, a in batch)
        ids = torch.full((len(batch), width), tok.eos_token_id)
        labels = torch.full((len(batch), width), -100)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for r, (p, a) in enumerate(batch):
            seq = p + a
            ids[r, : len(seq)] = torch.tensor(seq)
            labels[r, len(p): len(seq)] = torch.tensor(a)  # loss on the answer only
            mask[r, : len(seq)] = 1
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        if step % 40 == 0 or step == cfg.adapter_steps - 1:
            log.info("test adapter step %d/%d loss %.3f", step + 1, cfg.adapter_steps, float(loss))
    tmp = Path(tempfile.mkdtemp(prefix="adapter-", dir=_ensure(cache)))
    model.save_pretrained(tmp)
    (tmp / "DONE").write_text("ok\n")
    publish_dir(tmp, out)
    return out
