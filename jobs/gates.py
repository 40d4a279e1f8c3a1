"""Gates: checks on a version's written tables before anything is published. A failed gate means
exit 3 and nothing published; the counts go into the run's manifest either way."""
from __future__ import annotations

from pyspark.sql import DataFrame

from cmaq.config import CmaqConfig
from jobs.pool_tables import item_columns, unaccounted


def table_counts(written: dict) -> dict:
    pool, dropped, quarantine = written["pool"], written["dropped"], written["quarantine"]
    counts = {"pool_rows": pool.count(), "pool_items": pool.select("content_id").distinct().count(),
              "dropped_rows": dropped.count(), "quarantined": quarantine.count()}
    counts["dropped_by_reason"] = {r[0]: int(r[1]) for r in dropped.groupBy("reason").count().collect()}
    counts["quarantined_by_reason"] = {r[0]: int(r[1]) for r in quarantine.groupBy("reason").count().collect()}
    return counts


def run_gates(written: dict, expected: DataFrame, counts: dict, cfg: CmaqConfig, prev_manifest: dict | None) -> dict:
    """The gates over a version's written tables. ``expected``: the items (with ``arm`` in a pool with
    arms) the tables must name. With arms, the quarantine rate and the volume change hold for every
    arm (each arm is a pool its users see), and each gate names the worst arm."""
    key = item_columns(written["pool"])
    dupes = written["pool"].groupBy(*key, "query").count().filter("count > 1").count()
    missing, extra = unaccounted(written, expected)
    n = max(counts.get("read", 0), 1)
    arms = counts.get("arms") or {"": {"quarantined": counts["quarantined"], "pool_rows": counts["pool_rows"]}}
    rates = {arm: c["quarantined"] / n for arm, c in arms.items()}
    worst = max(rates, key=rates.get)
    gates = {
        "no_duplicate_queries": {"ok": dupes == 0, "duplicates": dupes},
        "every_item_accounted_for": {"ok": missing == 0 and extra == 0, "missing": missing, "unexpected": extra},
        "quarantine_rate": {"ok": rates[worst] <= cfg.pool.max_quarantine_rate, "rate": round(rates[worst], 4),
                            "max": cfg.pool.max_quarantine_rate, **({"arm": worst} if worst else {})},
    }
    changes = {arm: volume_change(c["pool_rows"], previous_rows(prev_manifest, arm)) for arm, c in arms.items()}
    changes = {arm: c for arm, c in changes.items() if c is not None}
    if changes:
        worst = max(changes, key=lambda a: changes[a][0])
        change, before = changes[worst]
        gates["volume_change"] = {"ok": change <= cfg.pool.max_volume_change, "change": round(change, 4),
                                  "previous_rows": before, "max": cfg.pool.max_volume_change,
                                  **({"arm": worst} if worst else {})}
    else:
        gates["volume_change"] = {"ok": True, "note": "first version" if not prev_manifest else "new arms"}
    return gates


def previous_rows(prev_manifest: dict | None, arm: str) -> int | None:
    """An arm's pool rows in the previous version: its own arm's, or the whole pool's when that
    version had no arms (its one arm is what each arm replaces); None for an arm new tonight."""
    if not prev_manifest:
        return None
    prev_arms = prev_manifest["counts"].get("arms")
    if not prev_arms:
        return prev_manifest["counts"].get("pool_rows", 0)
    return prev_arms[arm]["pool_rows"] if arm in prev_arms else None


def volume_change(rows: int, before: int | None) -> tuple[float, int] | None:
    return None if before is None else (abs(rows - before) / max(before, 1), before)


def check_every_item_once(frames: dict, todo: DataFrame) -> None:
    """Every item asked for (in every arm) comes out (as served, dropped or quarantined rows) and no
    other does."""
    missing, extra = unaccounted(frames, todo)
    if missing or extra:
        raise RuntimeError(f"nearline generation lost {missing} items and invented {extra}; nothing published")
