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


# What a small model copies out of its prompt when it writes machine junk (issue 18): the shop-info
# line's hours / price / rating, a run of its numbers, a fragment cut inside a number, a lone filler word.
FILLER = {"en": "go", "zh": "然后"}


def shop_info_segments(item) -> list[str]:
    """The shop-info line's parts after the shop name and district (hours, price, rating, ...)."""
    return [s.strip() for s in str(item.get("shop_info") or "").split("·")][2:]


class MachineJunkEngine(PlantingEngine):
    """Beam results whose first four candidates are machine junk made from the item's own shop-info line;
    the fifth is one honest query."""

    def _fill(self, item, k):
        segments = shop_info_segments(item) or ["10:00-22:00"]
        lang = "zh" if item.get("lang") == "zh" else "en"
        numbers = " ".join("".join(ch for ch in s if ch.isdigit() or ch in ":.-") for s in segments).split()
        line = " · ".join(segments)
        junk = [" · ".join(segments[:2]),                          # a copy of part of the shop-info line
                " ".join(numbers[:3]) or "10:00 22:00 88",          # its numbers alone
                line[line.find(":") + 1:] if ":" in line else line,  # cut inside a time: "00-22:00 · about ..."
                FILLER[lang]]                                       # a lone filler word
        good = GOOD[zlib.crc32(str(item.get("content_id")).encode()) % len(GOOD)].format(
            shop=item.get("shop_name") or "shop", cat=item.get("category") or "place",
            district=item.get("district") or "town")
        texts = (junk + [good])[:k]
        return [Candidate(t, -1.0 - i, i) for i, t in enumerate(texts)]


class WorkerKillingEngine(PlantingEngine):
    """The planting engine, except that a batch holding the item named by CMAQ_TEST_KILLER_ID ends the
    whole Python process on the spot (``os._exit``: no exception, no cleanup), as a segfault in a
    native kernel or an out-of-memory kill would."""

    def beam(self, items, width=5, adapter=None):
        import os

        killer = os.environ.get("CMAQ_TEST_KILLER_ID")
        if killer and any(str(it.get("content_id")) == killer for it in items):
            os._exit(137)
        return super().beam(items, width=width, adapter=adapter)


class AdapterStyledEngine(PlantingEngine):
    """PlantingEngine whose adapters leave a mark: an adapter directory named ``style-<word>`` ends
    every query with ``<word>``, so a test can tell which arm's adapter made a row."""

    def beam(self, items, width=5, adapter=None):
        from pathlib import Path

        out = super().beam(items, width=width, adapter=adapter)
        if adapter:
            word = Path(adapter).name.split("-")[-1]
            for res in out:
                res.candidates = [Candidate(f"{c.text} {word}", c.logprob, c.rank) for c in res.candidates]
        return out
