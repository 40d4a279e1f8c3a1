"""What every filter shares: the batch it reads, the verdict it returns, the reason codes.

A filter is a small picklable object with a config dataclass. ``apply(batch, active)`` looks only
at rows still ``active`` (not dropped by an earlier filter) and returns, for all rows, a boolean
``drop`` array, the reason code of each drop, and a float score column (NaN where not computed).
Reason codes are stable strings; the pool, the dropped-candidates table and the manifest use them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cmaq.text import normalize_array

# --------------------------------------------------------------------------- reason codes

EMPTY = "empty"
TOO_LONG = "too_long"
TOO_SHORT = "too_short"
NO_LETTERS = "no_letters"            # punctuation-, symbol- or emoji-only
CONTROL_CHARS = "control_chars"      # C0/C1 controls, bidi overrides, other invisible format characters
URL = "url"
EMAIL = "email"
PHONE = "phone"
MARKUP = "markup"
REPEATED_TOKENS = "repeated_tokens"
INSTRUCTION_ECHO = "instruction_echo"
DECODING_DEBRIS = "decoding_debris"  # U+FFFD, private-use characters, byte-fallback tokens, mojibake
MOSTLY_NUMBERS = "mostly_numbers"    # digits, times, prices and stand-alone punctuation outweigh the words
SHOP_INFO_COPY = "shop_info_copy"    # hours, price, rating or address lifted from the shop-info line
FILLER_WORD = "filler_word"          # one filler word alone ("go", "nice", "然后")
TRUNCATED = "truncated"              # cut off: open bracket, dangling connector, a note's word cut mid-way
DUPLICATE = "duplicate"              # same normalised query earlier for the same item
COMMERCIAL = "commercial"
HARM = "harm"
SHOP_NAME_SIMILAR = "shop_name_similar"
TITLE_COPY = "title_copy"
LOW_RELEVANCE = "low_relevance"

REASONS = (EMPTY, TOO_SHORT, TOO_LONG, NO_LETTERS, CONTROL_CHARS, DECODING_DEBRIS, URL, EMAIL, PHONE, MARKUP,
           REPEATED_TOKENS, INSTRUCTION_ECHO, MOSTLY_NUMBERS, SHOP_INFO_COPY, FILLER_WORD, TRUNCATED, DUPLICATE,
           COMMERCIAL, HARM, SHOP_NAME_SIMILAR, TITLE_COPY, LOW_RELEVANCE)

# Input columns a batch must have; content columns may be null.
QUERY_COLUMN = "query"
CONTENT_COLUMNS = ("content_id", "lang", "shop_name", "district", "title", "body", "shop_info")


@dataclass
class FilterBatch:
    """A batch of (content item, candidate) rows, prepared once for all filters.

    ``query`` is the cleaned query (the lexical filter's normalisation: NFKC, wrappers stripped,
    whitespace collapsed, case kept) and ``key`` its case-folded form used for matching.
    """

    table: pa.Table
    query: list[str]
    key: list[str]
    n: int = field(init=False)

    _items: tuple | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.n = len(self.query)

    def column(self, name: str) -> list:
        """A content column as a Python list with nulls as ''."""
        return ["" if v is None else v for v in self.table[name].to_pylist()]

    def item_rows(self) -> tuple[np.ndarray, np.ndarray]:
        """(first row of each distinct content_id, index of each row's item in that list): rows of
        one item share its note, so per-item work (normalising a long body) is done once."""
        if self._items is None:
            ids = pc.fill_null(self.table["content_id"].cast(pa.string()), "")
            codes = pc.dictionary_encode(ids).combine_chunks()
            index = codes.indices.to_numpy(zero_copy_only=False).astype(np.int64)
            _, first = np.unique(index, return_index=True)
            remap = np.empty(len(first), np.int64)
            remap[np.unique(index)] = np.arange(len(first))
            self._items = (first, remap[index])
        return self._items

    def item_text(self, *columns: str) -> list[str]:
        """Per distinct item (see :meth:`item_rows`): the columns joined by spaces, normalised."""
        first, _ = self.item_rows()
        sub = self.table.select(list(columns)).take(pa.array(first))
        parts = [pc.fill_null(sub[c].cast(pa.string()), "") for c in columns]
        joined = parts[0] if len(parts) == 1 else pc.binary_join_element_wise(*parts, " ")
        return normalize_array(joined).to_pylist()


@dataclass
class Verdict:
    """One filter's answer for every row of a batch."""

    drop: np.ndarray                 # bool[n]
    reason: list[str | None]         # reason code where dropped, else None
    score: np.ndarray                # float64[n], NaN where not computed

    @classmethod
    def keep_all(cls, n: int) -> "Verdict":
        return cls(np.zeros(n, bool), [None] * n, np.full(n, np.nan))


class Filter(Protocol):
    name: ClassVar[str]

    def apply(self, batch: FilterBatch, active: np.ndarray) -> Verdict: ...


def reasons_to_verdict(reasons: list[str | None], score: np.ndarray | None = None) -> Verdict:
    drop = np.fromiter((r is not None for r in reasons), bool, len(reasons))
    return Verdict(drop, reasons, score if score is not None else np.full(len(reasons), np.nan))
