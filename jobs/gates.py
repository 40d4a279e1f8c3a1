"""Gates: checks on a version's written tables before anything is published. A failed gate means
exit 3 and nothing published; the counts go into the run's manifest either way."""
from __future__ import annotations

from pyspark.sql import DataFrame

from cmaq.config import CmaqConfig
from jobs.pool_tables import unaccounted


def table_counts(written: dict) -> dict:
    pool, dropped, quarantine = written["pool"], written["dropped"], written["quarantine"]
    counts = {"pool_rows": pool.count(), "pool_items": pool.select("content_id").distinct().count(),
              "dropped_rows": dropped.count(), "quarantined": quarantine.count()}
    counts["dropped_by_reason"] = {r[0]: int(r[1]) for r in dropped.groupBy("reason").count().collect()}
    counts["quarantined_by_reason"] = {r[0]: int(r[1]) for r in quarantine.groupBy("reason").count().collect()}
    return counts


def run_gates(written: dict, content: DataFrame, counts: dict, cfg: CmaqConfig, prev_manifest: dict | None) -> dict:
    dupes = written["pool"].groupBy("content_id", "query").count().filter("count > 1").count()
    missing, extra = unaccounted(written, content)
    n = max(counts.get("read", 0), 1)
    q_rate = counts["quarantined"] / n
    gates = {
        "no_duplicate_queries": {"ok": dupes == 0, "duplicates": dupes},
        "every_item_accounted_for": {"ok": missing == 0 and extra == 0, "missing": missing, "unexpected": extra},
        "quarantine_rate": {"ok": q_rate <= cfg.pool.max_quarantine_rate, "rate": round(q_rate, 4),
                            "max": cfg.pool.max_quarantine_rate},
    }
    if prev_manifest:
        before = prev_manifest["counts"].get("pool_rows", 0)
        change = abs(counts["pool_rows"] - before) / max(before, 1)
        gates["volume_change"] = {"ok": change <= cfg.pool.max_volume_change, "change": round(change, 4),
                                  "previous_rows": before, "max": cfg.pool.max_volume_change}
    else:
        gates["volume_change"] = {"ok": True, "note": "first version"}
    return gates


def check_every_item_once(frames: dict, todo: DataFrame) -> None:
    """Every item asked for comes out (as served, dropped or quarantined rows) and no other does."""
    missing, extra = unaccounted(frames, todo)
    if missing or extra:
        raise RuntimeError(f"nearline generation lost {missing} items and invented {extra}; nothing published")
