"""Lexical quality: normalise what a model wrote, then reject what no reader should see.

>>> from cmaq.config import LexicalConfig
>>> f = LexicalFilter(LexicalConfig())
>>> f.clean('  Answer: "Hotpot  dipping sauce".  ')
'Hotpot dipping sauce'
"""
from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cmaq.config import LexicalConfig
from cmaq.text import regex_alternation, to_string_array
from filters import base as b
from filters import junk

# Invisible characters a model or a copy-paste leaves inside words; removed, not judged.
_ZERO_WIDTH_RE2 = r"[\x{200b}\x{200c}\x{200d}\x{2060}\x{feff}\x{00ad}]"
# Unicode whitespace (RE2's \s is ASCII-only).
_SPACE_RUN = r"[\s\x{85}\x{a0}\x{1680}\x{2000}-\x{200a}\x{2028}\x{2029}\x{202f}\x{205f}\x{3000}]+"
_QUOTES = "\"'“”‘’「」『』«»`"
_TRAILING = ".。,，、;；"

# RE2 patterns (run by Arrow over the whole batch).
_CONTROL = r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\x{061c}\x{200e}\x{200f}\x{202a}-\x{202e}\x{2066}-\x{2069}\x{fff9}-\x{fffb}]"
_LETTER_OR_DIGIT = r"[\pL\pN]"
_URL = (r"(?i)(?:[a-z][a-z0-9+.-]*://|www\.|\b[a-z0-9-]+(?:\.[a-z0-9-]+)*\."
        r"(?:com|net|org|cn|io|co|info|biz|xyz|top|me|ly|html?|php)\b)")
_EMAIL = r"(?i)[a-z0-9._%+-]+@[a-z0-9-]+(?:\.[a-z0-9-]+)*\.[a-z]{2,}"
_PHONE = r"\+?\d(?:[ ()-]?\d){6,}"
_MARKUP = (r"(?i)<\s*/?\s*[a-z!?][^>]*>|&(?:[a-z]{2,8}|#\d{2,6}|#x[0-9a-f]{2,6});|\[/?(?:b|i|u|url|img|quote|code)\b[^\]]*\]"
           r"|\{\{|\}\}|\*\*|__|^#{1,6} |\]\(|```")
# What a byte-level decoder leaves when it stops inside a character (U+FFFD, U+FFFC), private-use
# characters, unmerged byte-fallback tokens ("<0xE6>") and UTF-8 read as Latin-1 ("Ã©", "â€™").
_DEBRIS = r"[\x{fffd}\x{fffc}\x{e000}-\x{f8ff}]|<0x[0-9A-Fa-f]{2}>|Ã[\x{80}-\x{bf}]|â€"
_CJK = r"[\x{3400}-\x{4dbf}\x{4e00}-\x{9fff}\x{f900}-\x{faff}\x{20000}-\x{2fa1f}]"
# Duplicates are judged ignoring case, spaces and punctuation: "Hotpot, Riverside" == "hotpot riverside",
# 毛肚，蘸料 == 毛肚蘸料.
_NON_WORD = re.compile(r"[\W_]+")
_CJK_RUN_REPEAT = r"([\u3400-\u9fff\U00020000-\U0002fa1f]{1,4})\1{%d,}"


def duplicate_key(key: str) -> str:
    """What two candidates of one item share when one is a duplicate of the other (``key``: the
    case-folded cleaned query)."""
    return _NON_WORD.sub("", key)


class LexicalFilter:
    """Normalisation plus: empty, length (words, or CJK characters), no letters, control characters,
    decoding debris, URL, e-mail, phone number, markup, instruction echo, repeated tokens, and the
    machine junk of :mod:`filters.junk` (mostly numbers, shop-info copy, a lone filler word,
    truncated), then duplicates per item."""

    name = "lexical"
    required_columns = ("shop_name", "district", "shop_info", "title", "body")

    def __init__(self, cfg: LexicalConfig):
        self.cfg = cfg
        prefixes = regex_alternation([p.lower() for p in cfg.strip_prefixes if p.strip()], False)
        self._prefix = rf"(?i)^ ?{prefixes} ?: ?" if cfg.strip_prefixes else None
        self._repeat = re.compile(_CJK_RUN_REPEAT % cfg.max_token_repeats)
        self._echo = regex_alternation([p.lower() for p in cfg.instruction_phrases if p.strip()], False)
        self._fillers = junk.lowered(cfg.filler_words)
        self._dangling = junk.lowered(cfg.dangling_words)

    def __getstate__(self):
        return {"cfg": self.cfg}

    def __setstate__(self, state):
        self.__init__(state["cfg"])

    # ------------------------------------------------------------------ normalisation

    def clean(self, text) -> str:
        """One string through :meth:`clean_array`."""
        return self.clean_array([text]).to_pylist()[0]

    def clean_array(self, values) -> pa.Array:
        """NFKC, invisible characters removed, whitespace collapsed, answer prefixes and wrapping
        quotes stripped; nulls become "". Case is kept (the pool shows what the model wrote).
        Vectorised (Arrow kernels), so a batch costs little more than one string."""
        arr = pc.fill_null(to_string_array(values).cast(pa.string()), "")
        arr = pc.replace_substring_regex(arr, pattern=_ZERO_WIDTH_RE2, replacement="")
        arr = pc.utf8_normalize(arr, form="NFKC")
        arr = pc.utf8_trim_whitespace(pc.replace_substring_regex(arr, pattern=_SPACE_RUN, replacement=" "))
        for _ in range(2):  # a prefix inside quotes, or quotes inside a prefix
            if self._prefix is not None:
                arr = pc.replace_substring_regex(arr, pattern=self._prefix, replacement="")
            arr = pc.utf8_trim(arr, characters=_QUOTES + " ")
            arr = pc.utf8_rtrim(arr, characters=_TRAILING)
            arr = pc.utf8_trim(arr, characters=_QUOTES + " ")
        return arr

    # ------------------------------------------------------------------ checks

    def apply(self, batch: b.FilterBatch, active: np.ndarray) -> b.Verdict:
        cfg = self.cfg
        q = pa.array(batch.query, pa.string())
        key = pa.array(batch.key, pa.string())
        chars = pc.utf8_length(q).to_numpy(zero_copy_only=False)
        cjk = pc.count_substring_regex(q, pattern=_CJK).to_numpy(zero_copy_only=False)
        latin_words = pc.list_value_length(pc.utf8_split_whitespace(
            pc.replace_substring_regex(q, pattern=_CJK, replacement=" "))).to_numpy(zero_copy_only=False)
        ratio = np.maximum(latin_words / cfg.max_words, cjk / cfg.max_cjk_chars)

        def rx(pattern: str, arr=q) -> np.ndarray:
            return pc.match_substring_regex(arr, pattern=pattern).to_numpy(zero_copy_only=False)

        # In priority order: the first that holds is the reason.
        checks = [
            (b.EMPTY, chars == 0),
            (b.CONTROL_CHARS, rx(_CONTROL)),
            (b.DECODING_DEBRIS, rx(_DEBRIS)),
            (b.NO_LETTERS, ~rx(_LETTER_OR_DIGIT)),
            (b.TOO_SHORT, chars < cfg.min_chars),
            (b.TOO_LONG, (chars > cfg.max_chars) | (latin_words > cfg.max_words) | (cjk > cfg.max_cjk_chars)),
            (b.EMAIL, rx(_EMAIL)),
            (b.URL, rx(_URL)),
            (b.PHONE, rx(_PHONE)),
            (b.MARKUP, rx(_MARKUP)),
            (b.INSTRUCTION_ECHO, rx(self._echo, key)),
        ]
        reasons: list[str | None] = [None] * batch.n
        pending = active.copy()
        for code, hit in checks:
            hit = hit & pending
            for i in np.flatnonzero(hit):
                reasons[i] = code
            pending &= ~hit
        for i in np.flatnonzero(pending):
            if self._repeated(batch.key[i]):
                reasons[i] = b.REPEATED_TOKENS
                pending[i] = False
        self._mark_junk(batch, pending, reasons)
        self._mark_duplicates(batch, pending, reasons)
        score = np.where(active, ratio, np.nan)
        return b.reasons_to_verdict(reasons, score)

    def _repeated(self, key: str) -> bool:
        tokens = key.split()
        limit = self.cfg.max_token_repeats
        if len(tokens) > limit and len(set(tokens)) < len(tokens):
            counts: dict[str, int] = {}
            for t in tokens:
                counts[t] = counts.get(t, 0) + 1
                if counts[t] > limit:
                    return True
        return not key.isascii() and self._repeat.search(key) is not None

    def _mark_junk(self, batch: b.FilterBatch, pending: np.ndarray, reasons: list) -> None:
        """The per-candidate rules of :mod:`filters.junk`, first failing one wins; the note's text is
        normalised once per item."""
        rows = np.flatnonzero(pending)
        if len(rows) == 0:
            return
        cfg = self.cfg
        _, item_of = batch.item_rows()
        info, name, district = batch.item_text("shop_info"), batch.item_text("shop_name"), batch.item_text("district")
        note = batch.item_text("title", "body", "shop_info")
        for i in rows:
            key, it = batch.key[i], item_of[i]
            if junk.number_share(key) > cfg.max_number_share:
                reasons[i] = b.MOSTLY_NUMBERS
            elif junk.copies_shop_info(key, info[it], (name[it], district[it]), cfg.shop_info_similarity):
                reasons[i] = b.SHOP_INFO_COPY
            elif junk.is_filler(key, self._fillers):
                reasons[i] = b.FILLER_WORD
            elif junk.is_truncated(key, note[it], self._dangling):
                reasons[i] = b.TRUNCATED
            else:
                continue
            pending[i] = False

    @staticmethod
    def _mark_duplicates(batch: b.FilterBatch, pending: np.ndarray, reasons: list) -> None:
        """The first occurrence of a (content_id, normalised query) stays; later ones are duplicates."""
        seen: set[tuple[str, str]] = set()
        ids = batch.column("content_id")
        for i in np.flatnonzero(pending):
            k = (ids[i], duplicate_key(batch.key[i]))
            if k in seen:
                reasons[i] = b.DUPLICATE
            else:
                seen.add(k)
