"""Text normalisation shared by the world's oracle, the filters and the data builders."""
from __future__ import annotations

import re
import unicodedata

import pyarrow as pa
import pyarrow.compute as pc

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


# Full-width ASCII forms and the ideographic space, mapped the way NFKC maps them. Replacing them
# first lets most Chinese text pass NFKC's quick check, which is far cheaper than normalising;
# the result is the same as NFKC's.
_FULL_WIDTH = re.compile("[\uff01-\uff5e\u3000]")


def _half_width(m: re.Match) -> str:
    c = ord(m.group())
    return " " if c == 0x3000 else chr(c - 0xFEE0)


def normalize(text: str | None) -> str:
    """NFKC, lower case, whitespace collapsed and trimmed. ``None`` becomes ``""``.

    >>> normalize("  Ｈｏｔｐｏｔ\u3000 Ｂａｒ！ ")
    'hotpot bar!'
    """
    if not text:
        return ""
    if not text.isascii() and not unicodedata.is_normalized("NFKC", text):
        text = _FULL_WIDTH.sub(_half_width, text)
        if not unicodedata.is_normalized("NFKC", text):
            text = unicodedata.normalize("NFKC", text)
    return " ".join(text.split()).lower()


def to_string_array(values) -> pa.Array | pa.ChunkedArray:
    """An Arrow string array from Arrow data or Python strings. Strings that cannot be UTF-8
    (lone surrogates) have those code points replaced by U+FFFD instead of failing the batch."""
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return values
    values = list(values)
    try:
        return pa.array(values, pa.string())
    except (UnicodeEncodeError, pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.array([_utf8_safe(v) for v in values], pa.string())


def _utf8_safe(v) -> str | None:
    if v is None:
        return None
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return str(v).encode("utf-8", "surrogatepass").decode("utf-8", "replace")


def normalize_array(values) -> pa.Array:
    """The vectorised twin of :func:`normalize` over an Arrow string array (nulls become "")."""
    arr = to_string_array(values)
    arr = pc.fill_null(arr.cast(pa.string()), "")
    arr = pc.utf8_normalize(arr, form="NFKC")
    arr = pc.replace_substring_regex(arr, pattern=r"\s+", replacement=" ")
    return pc.utf8_lower(pc.utf8_trim_whitespace(arr))


def is_cjk(text: str) -> bool:
    return bool(_CJK.search(text))


def regex_alternation(terms, word_boundaries: bool) -> str:
    """An RE2/Python-compatible alternation matching any of ``terms`` (longest first)."""
    def esc(t: str) -> str:
        return re.sub(r"([.^$*+?()\[\]{}|\\])", r"\\\1", t)

    body = "|".join(esc(t) for t in sorted({t for t in terms if t}, key=lambda s: (-len(s), s)))
    if not body:
        return r"(?!x)x"  # matches nothing
    return rf"\b(?:{body})\b" if word_boundaries else f"(?:{body})"


_PAREN = re.compile(r"[（(][^（）()]*[)）]")


def shop_core(name: str) -> str:
    """The shop's name without its branch: 海底捞火锅(白纸坊店) -> 海底捞火锅."""
    core = _PAREN.sub("", name).strip()
    return core or name
