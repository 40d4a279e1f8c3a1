"""Prompts: the generation prompt and the expansion reward-model prompt, in English and Chinese.

The note's title, shop and body sit between clear delimiters so that text inside a note (including
an injected "ignore the instructions") reads as content. Content is cut to a token budget — title
and shop info kept, body truncated — so no request exceeds the engine's ``max_model_len``. Where the
tokenizer has a chat template it is applied; the tiny test model has none and gets plain text.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

GEN_INSTRUCTION = {
    "en": ("You are a user of a local-life platform who has just read the note below. Write the one "
           "search you would type next: at most 15 words, related to the note but leading to something "
           "the note does not cover. Reply with the search only, no explanation or prefix."),
    "zh": ("你是本地生活平台的用户，刚读完下面这篇笔记。写出你接下来会搜索的一个词：不超过15个字，"
           "和笔记相关，但能带你了解笔记里没有的新内容。只输出搜索词，不要解释，不要前缀。"),
}
EXP_INSTRUCTION = {
    "en": ("Below are a note from a local-life platform and a search query. Answer 1 if the query leads "
           "to useful information the note does not contain and invites further exploration (for example "
           "booking, opening hours, related places or topics); answer 0 if it repeats the note, the shop "
           "name or the title, or is unrelated. Answer with a single digit."),
    "zh": ("下面是一篇本地生活笔记和一个搜索词。如果搜索词能带来笔记中没有的有用信息、让人想进一步探索"
           "（如预约方式、营业时间、相关地点或话题），回答1；如果它重复笔记、店名或标题，或与笔记无关，"
           "回答0。只回答一个数字。"),
}
LABELS = {"en": ("Title", "Shop", "Note", "Query", "Search"), "zh": ("标题", "店铺", "正文", "搜索词", "搜索")}
NOTE_OPEN, NOTE_CLOSE = "<note>", "</note>"


@dataclass(frozen=True)
class PromptLimits:
    max_prompt_tokens: int      # the engine's max_model_len minus the tokens it may generate
    max_title_chars: int = 200  # titles and shop info are kept, but not without bound
    max_shop_chars: int = 300


def _lang(item: Mapping) -> str:
    return "zh" if item.get("lang") == "zh" else "en"


def _clean(text) -> str:
    if text is None:
        return ""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    text = str(text).encode("utf-8", "replace").decode("utf-8")
    # The delimiters belong to the prompt; a note cannot close its own block.
    return text.replace(NOTE_OPEN, "<note >").replace(NOTE_CLOSE, "</note >").strip()


def _note_block(item: Mapping, body: str, limits: PromptLimits) -> str:
    t, s, n, _, _ = LABELS[_lang(item)]
    title = _clean(item.get("title"))[: limits.max_title_chars]
    shop = " · ".join(x for x in (_clean(item.get("shop_name")), _clean(item.get("shop_info"))) if x)
    return f"{NOTE_OPEN}\n{t}: {title}\n{s}: {shop[: limits.max_shop_chars]}\n{n}: {body}\n{NOTE_CLOSE}"


def _render(tokenizer, instruction: str, block: str, tail: str) -> str:
    text = f"{instruction}\n{block}\n{tail}"
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                             add_generation_prompt=True)
    return text


def _fit(item: Mapping, tokenizer, limits: PromptLimits, build) -> str:
    """Build the prompt, cutting the body until the whole prompt fits the token budget."""
    body = _clean(item.get("body"))
    # Cheap first cut: a token is at least one character in every tokenizer we use.
    body = body[: limits.max_prompt_tokens * 4]
    prompt = build(body)
    n = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    while n > limits.max_prompt_tokens and body:
        keep = max(0, int(len(body) * min(0.9, limits.max_prompt_tokens / n)) - 1)
        body = body[:keep]
        prompt = build(body)
        n = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    if n > limits.max_prompt_tokens:
        raise ValueError(f"prompt needs {n} tokens without any body; budget is {limits.max_prompt_tokens}")
    return prompt


def generation_prompt(item: Mapping, tokenizer, limits: PromptLimits) -> str:
    lang = _lang(item)
    tail = f"{LABELS[lang][4]}:"
    return _fit(item, tokenizer, limits,
                lambda body: _render(tokenizer, GEN_INSTRUCTION[lang], _note_block(item, body, limits), tail))


def expansion_prompt(item: Mapping, query: str, tokenizer, limits: PromptLimits) -> str:
    """The expansion RM reads this and answers "1" or "0" as the next token."""
    lang = _lang(item)
    q_label = LABELS[lang][3]
    tail = f"{q_label}: {_clean(query)}\n{'Answer' if lang == 'en' else '回答'}:"
    return _fit(item, tokenizer, limits,
                lambda body: _render(tokenizer, EXP_INSTRUCTION[lang], _note_block(item, body, limits), tail))


def ctr_input(item: Mapping, query: str, tokenizer, limits: PromptLimits) -> str:
    """What the CTR reward model reads: title, shop (name and info), the note and the query, last,
    so the score is read where the whole input has been seen and no cut ever removes the query."""
    lang = _lang(item)
    tail = f"{LABELS[lang][3]}: {_clean(query)}"
    return _fit(item, tokenizer, limits, lambda body: f"{_note_block(item, body, limits)}\n{tail}")
