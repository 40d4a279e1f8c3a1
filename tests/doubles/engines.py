"""Engine doubles for the pool-job tests: deterministic, fast, importable by Spark's Python workers
(the tests put the repository root on PYTHONPATH)."""
from __future__ import annotations

import zlib

from cmaq.engines.base import EMPTY_ITEM, Candidate, GenResult

GOOD = ["{shop} opening hours", "{shop} reservation", "{cat} nearby spots", "best time to visit {shop}",
        "{shop} menu highlights", "{shop} parking", "{cat} near {district}"]
# Bad candidates the filters must catch (the test checks with its own patterns).
PLANTED = ["fuck {shop}", "call 13812345678 now", "visit www.spam-deals.com", "<script>alert(1)</script>",
           "{shop} coupon discount"]


class PlantingEngine:
    """Beam results: 5 candidates per item, some of them planted bad ones, deterministic per item."""

    def __init__(self, cfg):
        self.cfg = cfg

    def _fill(self, item, k):
        shop, cat = (item.get("shop_name") or "shop"), (item.get("category") or "place")
        slots = {"shop": shop, "cat": cat, "district": item.get("district") or "town"}
        h = zlib.crc32(str(item.get("content_id")).encode())
        bad = PLANTED[h % len(PLANTED)].format(**slots)
        goods = [GOOD[(h + i) % len(GOOD)].format(**slots) for i in range(k)]
        texts = goods[:k - 1] + [bad] if h % 3 else goods[:k]
        return [Candidate(t, -1.0 - i, i) for i, t in enumerate(texts)]

    def beam(self, items, width=5, adapter=None):
        import os
        import time

        time.sleep(float(os.environ.get("CMAQ_TEST_ENGINE_DELAY", "0")))  # lets a test kill a run midway
        out = []
        for it in items:
            if not (it.get("title") or it.get("body")):
                out.append(GenResult(str(it.get("content_id")), error=(EMPTY_ITEM, "no text"),
                                     model_version="planting"))
            else:
                out.append(GenResult(str(it["content_id"]), self._fill(it, width), model_version="planting"))
        return out

    def sample(self, items, k, temperature, seed, adapter=None):
        return self.beam(items, width=k, adapter=adapter)
