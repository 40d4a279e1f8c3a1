"""Linear-time multi-term matching (Aho–Corasick) for the commercial and harm filters.

Latin-script terms match whole words only, so "Scunthorpe" does not contain a slur and "classic"
does not contain "ass". CJK terms match inside longer strings (Chinese has no spaces), except
single characters, which match only when they stand alone: 奶 alone is flagged, 奶茶 (milk tea)
and 性价比 (value for money) are not. With ``obfuscation=True`` the text is also read with
separators between single letters removed ("f.u.c.k", "f u c k"), with spaces and punctuation
inside CJK removed, and, with ``leetspeak=True``, with 0/1/3/4/5/7/@/$/!/| read as letters.
Text is NFKC-normalised and case-folded first, and zero-width characters are dropped, so
full-width letters and hidden joiners do not slip through.

>>> m = TermMatcher(["ass", "操你"], obfuscation=True, leetspeak=True)
>>> [m.find(t) for t in ["classic glass", "a$$ hat", "操 你", "Scunthorpe"]]
[None, 'ass', '操你', None]
"""
from __future__ import annotations

import re
import unicodedata
from typing import Iterable

import ahocorasick
import numpy as np
import pyarrow as pa

from filters import base as b

_ZERO_WIDTH = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff\u00ad\u180e"), None)
_LEET = str.maketrans(dict((("0", "o"), ("1", "i"), ("3", "e"), ("4", "a"), ("5", "s"), ("7", "t"), ("@", "a"),
                            ("$", "s"), ("!", "i"), ("|", "l"), ("€", "e"))))
_SQUEEZE = re.compile(r"[\W_]+")
_LEET_CHARS = re.compile(r"[0134579@$!|€]")
_CJK_CHAR = r"\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f"
_HAS_CJK = re.compile(f"[{_CJK_CHAR}]")
_NOT_WORD = re.compile(r"[\W_]+")
_NOT_CJK_WORD = re.compile(f"[^{_CJK_CHAR}a-z0-9]+")
_CJK_RUNS = re.compile(f"[{_CJK_CHAR}]+")
_WORDISH = re.compile(r"\w")


def base_form(text: str) -> str:
    """NFKC, zero-width characters removed, case-folded."""
    return unicodedata.normalize("NFKC", text.translate(_ZERO_WIDTH)).casefold()


def _words(text: str) -> list[str]:
    return [t for t in _NOT_WORD.split(text) if t]


def _collapse_single_letters(tokens: list[str]) -> list[str]:
    """Join runs of two or more one-character tokens: ["f", "u", "c", "k", "off"] -> ["fuck", "off"]."""
    out: list[str] = []
    run: list[str] = []
    for t in tokens:
        if len(t) == 1:
            run.append(t)
            continue
        if run:
            out.append("".join(run) if len(run) > 1 else run[0])
            run = []
        out.append(t)
    if run:
        out.append("".join(run) if len(run) > 1 else run[0])
    return out


class TermMatcher:
    """Find the first listed term in a text (see the module docstring for the matching rules)."""

    def __init__(self, terms: Iterable[str], allow: Iterable[str] = (), obfuscation: bool = False,
                 leetspeak: bool = False):
        self.obfuscation, self.leetspeak = obfuscation, leetspeak
        self._terms = sorted({t.strip() for t in terms if t and t.strip()})
        self._allow = sorted({a.strip() for a in allow if a and a.strip()})
        self._build()

    def __getstate__(self):
        return {"terms": self._terms, "allow": self._allow, "obfuscation": self.obfuscation,
                "leetspeak": self.leetspeak}

    def __setstate__(self, state):
        self.__init__(state["terms"], state["allow"], state["obfuscation"], state["leetspeak"])

    def _build(self) -> None:
        self._latin = ahocorasick.Automaton()   # " word word " -> term
        self._cjk = ahocorasick.Automaton()     # substring -> (term, is_allowed, key length)
        self._symbols: list[tuple[str, str]] = []  # terms with no letters or digits (emoji)
        self._single_cjk: dict[str, str] = {}
        latin_keys = 0
        for term in self._terms:
            form = base_form(term)
            if _HAS_CJK.search(form):
                key = _NOT_CJK_WORD.sub("", form)
                if len(key) == 1:
                    self._single_cjk[key] = term
                elif key:
                    self._cjk.add_word(key, (term, False, len(key)))
            elif not _WORDISH.search(form):
                self._symbols.append((form, term))
            else:
                words = _words(form)
                if words and not all(w.isdigit() for w in words):  # "13." alone would flag every 13
                    variants = {tuple(words), tuple(_collapse_single_letters(words))}
                    if self.leetspeak:
                        variants |= {tuple(_words(form.translate(_LEET)))}
                    for v in variants:
                        self._latin.add_word(" " + " ".join(v) + " ", term)
                        latin_keys += 1
        for allowed in self._allow:
            key = _NOT_CJK_WORD.sub("", base_form(allowed))
            if _HAS_CJK.search(key) and len(key) > 1:
                self._cjk.add_word(key, (allowed, True, len(key)))
        self._prefilter = self._prefilter_automaton()
        self._has_latin = latin_keys > 0
        self._has_cjk = len(self._cjk) > 0
        if self._has_latin:
            self._latin.make_automaton()
        if self._has_cjk:
            self._cjk.make_automaton()

    def _prefilter_automaton(self) -> ahocorasick.Automaton | None:
        """Every term with all separators squeezed out (plain and leet), in one automaton. Any exact
        match implies one of these in the squeezed text, so it rules rows out cheaply. (An RE2
        alternation did the same in Arrow, but RE2 compiles it and its Unicode classes again on each
        call: ~10 ms a batch, more than the matching.)"""
        forms = set()
        for term in self._terms:
            form = base_form(term)
            forms.add(_SQUEEZE.sub("", form))
            if self.leetspeak:
                forms.add(_SQUEEZE.sub("", form.translate(_LEET)))
            if _HAS_CJK.search(form):  # the CJK matcher's own key keeps fewer letters than the squeeze
                forms.add(_NOT_CJK_WORD.sub("", form))
        forms.discard("")  # symbol-only terms: matched as symbols
        if not forms:
            return None
        automaton = ahocorasick.Automaton()
        for form in forms:
            automaton.add_word(form, form)
        automaton.make_automaton()
        return automaton

    def may_hold(self, text: str | None) -> bool:
        """False where ``text`` certainly holds no term; True where :meth:`find` must look."""
        if not text:
            return False
        form = base_form(text)
        if any(sym in form for sym, _ in self._symbols):
            return True
        if self._prefilter is None:
            return False
        views = [_SQUEEZE.sub("", form)]
        if self.leetspeak:
            views.append(_SQUEEZE.sub("", form.translate(_LEET)))
        if self.obfuscation and _HAS_CJK.search(form):  # as _find_cjk reads it: "操é你" holds 操你
            views.append(_NOT_CJK_WORD.sub("", form))
        return any(view and next(self._prefilter.iter(view), None) is not None for view in views)

    def candidates(self, texts) -> np.ndarray:
        """:meth:`may_hold` over a batch."""
        texts = texts.to_pylist() if isinstance(texts, (pa.Array, pa.ChunkedArray)) else list(texts)
        return np.fromiter((self.may_hold(t) for t in texts), bool, len(texts))

    def find_many(self, texts) -> list[str | None]:
        """:meth:`find` over a batch, skipping the rows the prefilter (:meth:`may_hold`) rules out."""
        texts = list(texts) if not isinstance(texts, (pa.Array, pa.ChunkedArray)) else texts.to_pylist()
        out: list[str | None] = [None] * len(texts)
        if texts:
            for i in np.flatnonzero(self.candidates(texts)):
                out[i] = self.find(texts[i])
        return out

    def __len__(self) -> int:
        return len(self._terms)

    # ------------------------------------------------------------------ matching

    def find(self, text: str | None) -> str | None:
        """The first blocked term found in ``text``, or None."""
        if not text:
            return None
        form = base_form(text)
        for sym, term in self._symbols:
            if sym in form:
                return term
        if self._has_latin:
            hit = self._find_latin(form)
            if hit:
                return hit
        if self._single_cjk or self._has_cjk:
            return self._find_cjk(form)
        return None

    def _latin_views(self, form: str) -> Iterable[list[str]]:
        words = _words(form)
        yield words
        if self.obfuscation:
            collapsed = _collapse_single_letters(words)
            if len(collapsed) != len(words):
                yield collapsed
        if self.leetspeak and _LEET_CHARS.search(form):
            leet = _words(form.translate(_LEET))
            yield leet
            if self.obfuscation:
                yield _collapse_single_letters(leet)

    def _find_latin(self, form: str) -> str | None:
        for words in self._latin_views(form):
            if not words:
                continue
            for _, term in self._latin.iter(" " + " ".join(words) + " "):
                return term
        return None

    def _find_cjk(self, form: str) -> str | None:
        if not _HAS_CJK.search(form):
            return None
        if self._single_cjk:
            for run in _CJK_RUNS.findall(form):
                if run in self._single_cjk:
                    return self._single_cjk[run]
        if not self._has_cjk:
            return None
        text = _NOT_CJK_WORD.sub("", form) if self.obfuscation else form
        blocked, allowed = [], []
        for end, (term, is_allowed, length) in self._cjk.iter(text):
            (allowed if is_allowed else blocked).append((end - length + 1, end, term))
        for start, end, term in blocked:
            if not any(s <= start and end <= e for s, e, _ in allowed):
                return term
        return None


class TermFilter:
    """A filter that drops rows whose text contains a listed term (commercial, harm)."""

    name = ""
    reason = ""
    text_field = "key"  # FilterBatch attribute the matcher reads: "key" (normalised) or "query"
    matcher: TermMatcher

    def apply(self, batch, active):
        reasons: list[str | None] = [None] * batch.n
        score = np.full(batch.n, np.nan)
        idx = np.flatnonzero(active)
        texts = getattr(batch, self.text_field)
        for i, hit in zip(idx, self.matcher.find_many([texts[i] for i in idx])):
            score[i] = 1.0 if hit else 0.0
            if hit:
                reasons[i] = self.reason
        return b.reasons_to_verdict(reasons, score)
