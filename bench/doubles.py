"""Engine doubles for the benchmarks: Spark's Python workers import them by name
(``engine.backend=bench.doubles:LatencyEngine``; the bench puts the repository root on PYTHONPATH)."""
from __future__ import annotations

import math
import random
import time
import zlib

from cmaq.engines.base import EMPTY_ITEM, Candidate, GenResult

MEDIAN_S = 0.020
# p99 / median of a log-normal is exp(2.326 sigma): sigma 1.0 gives 10.2x, the bench's ">= 10x".
SIGMA = 1.0
# Five candidates in the shapes a query model writes; the serving chain keeps some and drops others.
SHAPES = ["{shop} opening hours", "{shop} reservation", "{cat} near {district}", "best {cat} {district}",
          "{shop} menu", "{first} {second}", "{shop} parking", "{shop} coupon discount", "{first}"]


def item_latency_s(content_id: str) -> float:
    """The item's stand-in for GPU time: log-normal, fixed per item so every design sees the same."""
    return random.Random(zlib.crc32(content_id.encode())).lognormvariate(math.log(MEDIAN_S), SIGMA)


class LatencyEngine:
    """Beam results after sleeping each item's latency (one call sleeps the batch's sum, as a GPU
    batch costs about its items' time). Sleeping takes no CPU: the job's CPU is its own overhead."""

    def __init__(self, cfg):
        self.cfg = cfg

    def beam(self, items, width=5, adapter=None):
        time.sleep(sum(item_latency_s(str(it.get("content_id"))) for it in items))
        return [self._result(it, width) for it in items]

    def _result(self, item, width):
        cid = str(item.get("content_id"))
        if not (item.get("title") or item.get("body")):
            return GenResult(cid, error=(EMPTY_ITEM, "no text"), model_version="latency")
        words = (item.get("title") or item.get("body") or "").split() + ["guide", "tips"]
        slots = {"shop": item.get("shop_name") or "shop", "cat": item.get("category") or "place",
                 "district": item.get("district") or "town", "first": words[0], "second": words[1]}
        h = zlib.crc32(cid.encode())
        texts = [SHAPES[(h + i) % len(SHAPES)].format(**slots) for i in range(width)]
        return GenResult(cid, [Candidate(t, -1.0 - i, i) for i, t in enumerate(texts)], model_version="latency")

    def sample(self, items, k, temperature, seed, adapter=None):
        return self.beam(items, width=k, adapter=adapter)
