"""Machine junk: text a generator writes that no reader would type, judged one candidate at a time.

The lexical filter runs these after its pattern checks. Each rule comes from what the project's
models emitted (QSA's samples on held-out notes, the demo's pool) and each was checked against real
text: the CrossWOZ Beijing restaurant names and dishes, which hold prices ("13元刀削面"), hours
("24小时营业"), numbered names ("88号院") and pinyin glued to characters ("杏仁er豆腐"), all pass.

- **Mostly numbers**: "00-21:00 · about $27 per person · rating 4.7". A query is cut into units
  (a Latin word, a number with its currency and separators, a whitespace-delimited run of
  punctuation, two CJK characters) and dropped when the numbers and punctuation runs are more than
  ``max_number_share`` of the units.
- **Shop-info copy**: the shop-info line's facts (the parts that hold a digit: hours, price per
  person, rating, a street number) show up in a candidate: a clock time of the line, a whole fact
  verbatim, or a near copy of one fact or of a run of parts holding one.
- **A lone filler word**: "go", "nice", "然后" — one word from ``filler_words`` and nothing else.
- **Truncated**: an unclosed bracket, a leading closing bracket, a dangling connector or separator at
  either end ("things to do near", "然后还有"), a number with a leading zero at the start, or a copy of
  the note's text cut inside a word or a number: "sk the staff about …" where the note says "ask the
  staff about", "… Lit" where it says "Little", "00元左右，在大钟寺算良心了" where it says "人均100元左右".
"""
from __future__ import annotations

import re
from functools import lru_cache
from typing import Iterable

from rapidfuzz.distance import Indel

_CJK_CHAR = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f]")
# A number with what prints around it: "$27", "4.7", "10:00-22:00", "387元" keeps its 元 as a CJK unit.
_NUMBER = re.compile(r"[$¥￥€£]?\d+(?:[.:,/~\-–—]\d+)*%?")
_LATIN_WORD = re.compile(r"[^\W\d_]+(?:['’\-&][^\W\d_]+)*")
_PUNCT_TOKEN = re.compile(r"^[^\w\s]+$")
_DIGIT_OR_PUNCT = re.compile(r"\d|(?:^|\s)[^\w\s]+(?:\s|$)")
_CLOCK = re.compile(r"\d{1,2}:\d{2}")
# Separators of the shop-info line ("Jade Hotpot · Riverside · hours 10:00-22:00 · …").
_INFO_SPLIT = re.compile(r"\s*[·|｜;；\n]\s*")

_OPENERS, _CLOSERS = "([{（【「『《", ")]}）】」』》"
_PAIRS = dict(zip(_OPENERS, _CLOSERS))
# A query cannot end on a separator or an opener, nor start with a closer or separator.
_BAD_END = set("-–—/\\,，、:：;；&·|" + _OPENERS)
_BAD_START = set(",，、:：;；&·|%" + _CLOSERS)
# Inflections that turn a stem into another word; a copy that stops before them is not cut.
_INFLECTIONS = ("s", "es", "ed", "er", "ers", "ing", "ly")
_LATIN_HEAD = re.compile(r"^[a-z]+(?: [a-z]+)?")
_LATIN_TAIL = re.compile(r"(?:[a-z]+ )?[a-z]+$")
_LETTERS = re.compile(r"[a-z]*")
# "00元左右,在大钟寺算良心了", "00-19:00,讲得很清楚": a copy that starts inside a number ("人均100元", "10:00").
_LEADING_ZERO = re.compile(r"^0\d*[元块:：\-–.,，%]")  # not "00后" or "007"
_DIGIT_HEAD = re.compile(r"^\d+\D{0,3}")
_MIN_PROBE = 4


def number_share(text: str) -> float:
    """The share of ``text``'s units that are numbers or stand-alone punctuation (0 for no units)."""
    if not _DIGIT_OR_PUNCT.search(text):
        return 0.0
    numbers = punct = words = 0.0
    for token in text.split():
        if _PUNCT_TOKEN.match(token):
            punct += 1
            continue
        cjk = len(_CJK_CHAR.findall(token))
        words += cjk / 2
        rest = _CJK_CHAR.sub(" ", token)
        n = len(_NUMBER.findall(rest))
        numbers += n
        words += len(_LATIN_WORD.findall(_NUMBER.sub(" ", rest)))
    total = numbers + punct + words
    return (numbers + punct) / total if total else 0.0


@lru_cache(maxsize=65536)
def shop_info_facts(shop_info: str, places: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """From a normalised shop-info line, leaving out the parts that name the shop or its district
    (``places``: "88号院" and "T2航站楼" are places people search, not facts): (its facts — the parts
    holding a digit —, its clock times, the runs of two or three adjacent parts that hold a fact)."""
    places = tuple(p for p in places if p)
    parts = [p for p in _INFO_SPLIT.split(shop_info) if p and not any(p in x or x in p for x in places)]
    facts = tuple(p for p in parts if any(c.isdigit() for c in p))
    clocks = tuple(dict.fromkeys(_CLOCK.findall(shop_info)))
    runs = []
    for width in (2, 3):
        for i in range(len(parts) - width + 1):
            window = parts[i:i + width]
            if any(p in facts for p in window):
                runs.append(" ".join(window))
    return facts, clocks, tuple(runs)


def copies_shop_info(key: str, shop_info: str, places: tuple[str, ...], min_similarity: float) -> bool:
    """Whether the normalised candidate ``key`` lifts a fact of the normalised ``shop_info`` line;
    ``places`` are the normalised shop name and district."""
    if not shop_info:
        return False
    facts, clocks, runs = shop_info_facts(shop_info, places)
    if any(c in key for c in clocks) or any(f in key for f in facts):
        return True
    if any(p and p in key for p in places):  # a name may look like an address ("柳沟豆腐宴24号院")
        return False
    flat = _INFO_SPLIT.sub(" ", key)
    # Indel similarity s needs the shorter string at least s / (2 - s) of the longer one's length.
    ratio = min_similarity / (2 - min_similarity)
    return any(Indel.normalized_similarity(flat, part, score_cutoff=min_similarity) >= min_similarity
               for part in (*facts, *runs) if ratio * len(part) <= len(flat) <= len(part) / ratio)


def is_filler(key: str, fillers: frozenset[str]) -> bool:
    """One filler word and nothing else (punctuation around it ignored)."""
    return key.strip(" !?.,;:！？。，、…~") in fillers


def _unbalanced(text: str) -> bool:
    stack = []
    for c in text:
        if c in _PAIRS:
            stack.append(_PAIRS[c])
        elif c in _CLOSERS:
            if not stack or stack.pop() != c:
                return True
    return bool(stack)


def _occurrences(probe: str, text: str):
    start = text.find(probe)
    while start >= 0:
        yield start
        start = text.find(probe, start + 1)


def _cut_inside_a_word(key: str, note: str) -> bool:
    """The candidate opens or closes with a copy of the note's text that the note continues inside
    a word: every occurrence of the candidate's first words follows a letter, or every occurrence
    of its last words runs on into a longer word (not just an inflection)."""
    head = _LATIN_HEAD.match(key)
    if head and len(head.group()) >= _MIN_PROBE:
        starts = list(_occurrences(head.group(), note))
        if starts and all(s > 0 and note[s - 1].isascii() and note[s - 1].isalpha() for s in starts):
            return True
    digits = _DIGIT_HEAD.match(key)
    if digits and len(digits.group()) >= 2:
        starts = list(_occurrences(digits.group(), note))
        if starts and all(s > 0 and note[s - 1].isdigit() for s in starts):
            return True
    tail = _LATIN_TAIL.search(key)
    if tail and len(tail.group()) >= _MIN_PROBE:
        probe = tail.group()
        runs_on = [_LETTERS.match(note, s + len(probe)).group() for s in _occurrences(probe, note)]
        if runs_on and all(len(r) >= 2 and r not in _INFLECTIONS for r in runs_on):
            return True
    return False


def is_truncated(key: str, note: str, dangling: frozenset[str]) -> bool:
    """Cut off: unbalanced brackets, a bad first or last character, a dangling connector word at the
    end (``dangling``, Latin words or CJK characters/words), or a note's word cut (``note``: the
    normalised title, body and shop-info line)."""
    if not key:
        return False
    if key[0] in _BAD_START or key[-1] in _BAD_END or _unbalanced(key) or _LEADING_ZERO.match(key):
        return True
    words = key.split()
    if len(words) > 1 and words[-1] in dangling:
        return True
    if _CJK_CHAR.match(key[-1]) and any(key.endswith(d) and len(key) > len(d) for d in dangling if not d.isascii()):
        return True
    return _cut_inside_a_word(key, note)


def lowered(terms: Iterable[str]) -> frozenset[str]:
    return frozenset(t.strip().lower() for t in terms if t.strip())
