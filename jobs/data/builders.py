"""The three training-data builders. Each is extract -> transform -> load:

* :func:`build_sft`   D_SFT, the query-style set (the method's data collection for QSA);
* :func:`build_ctr_pairs` significant CTR pairs for the CTR reward model;
* :func:`build_expansion` expansion labels for the expansion reward model.

Transforms take and return DataFrames; :func:`run` writes Parquet, the bad rows and a JSON summary
with how many rows each step removed. Splits are by content (normalised text), shared by all three.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.types import DoubleType

from cmaq.config import CmaqConfig, DataConfig, FiltersConfig
from cmaq.schema import CTR_PAIR_SCHEMA, EXPANSION_SCHEMA, SFT_SCHEMA
from jobs.data import common as c

log = logging.getLogger(__name__)


class Steps:
    """Counts rows before and after each step, for the summary (a cached DataFrame per step)."""

    def __init__(self):
        self.removed: dict[str, int] = {}
        self.sizes: dict[str, int] = {}

    def step(self, name: str, before: int, after: DataFrame) -> tuple[DataFrame, int]:
        after = after.cache()
        n = after.count()
        self.removed[name] = before - n
        self.sizes[name] = n
        log.info("%-28s %10d rows (%d removed)", name, n, before - n)
        return after, n


def _rank_key(seed: int, *cols: str):
    """A deterministic pseudo-random tie-break that changes with the seed."""
    return F.xxhash64(F.lit(f"cmaq-{seed}"), *cols)


# --------------------------------------------------------------------------- D_SFT


def build_sft(content: DataFrame, logs: DataFrame, split: DataFrame, data: DataConfig,
              filters: FiltersConfig) -> tuple[DataFrame, DataFrame, dict]:
    """-> (D_SFT rows of the train split, bad rows, summary)."""
    steps = Steps()
    logs, bad_logs = c.validate_logs(logs)
    content, bad_content = c.validate_content(content)
    windowed, n = steps.step("window", logs.count(), c.window(logs, data.window_months))
    agg, n = steps.step("aggregate (content, query)", n, c.aggregate(windowed))
    joined, bad_unknown = c.with_content(agg, content)
    joined, n = steps.step("join content", n, joined)
    exposed, n = steps.step("min impressions", n, joined.filter(F.col("impressions") >= data.min_impressions))

    filtered = c.apply_filter_chain(exposed, filters, "training").cache()
    reasons = c.counts_by(filtered.filter(~F.col("keep")), "reason")
    kept, n_after = steps.step("filters (training chain)", n, filtered.filter("keep").drop("keep", "reason"))
    steps.removed.update({f"filter:{k}": v for k, v in sorted(reasons.items())})
    n = n_after

    cutoff = kept.approxQuantile("ctr", [data.ctr_percentile_cutoff], 0.0)[0] if n else 0.0
    above, n = steps.step("ctr percentile cutoff", n, kept.filter(F.col("ctr") >= cutoff))

    train, n = steps.step("train split only", n,
                          above.join(split.filter("split = 'train'").select("content_id"), "content_id"))
    score = F.col("ctr") + F.lit(data.exposure_weight) * F.log10(F.col("impressions"))
    w = Window.partitionBy("category").orderBy(score.desc(), F.col("impressions").desc(),
                                                _rank_key(data.seed, "content_id", "query"))
    capped, n = steps.step("per-category cap", n,
                           train.withColumn("_r", F.row_number().over(w)).filter(F.col("_r") <= data.per_category_cap)
                           .drop("_r"))
    out = capped.select(*SFT_SCHEMA.names)
    bad = bad_logs.unionByName(bad_content).unionByName(bad_unknown)
    summary = {"rows": n, "ctr_cutoff": cutoff, "removed": steps.removed, "sizes": steps.sizes}
    return out, bad, summary


# --------------------------------------------------------------------------- CTR pairs


def _ztest_udf(pdf_iter):
    # scipy is heavy and only the executors running the test need it, not every importer of the builders.
    from jobs.data.stats import two_proportion_ztest

    for pdf in pdf_iter:
        z, p = two_proportion_ztest(pdf["clicks_a"], pdf["impressions_a"], pdf["clicks_b"], pdf["impressions_b"])
        yield pdf.assign(z=z, p=p)


def build_ctr_pairs(content: DataFrame, logs: DataFrame, split: DataFrame, data: DataConfig) -> tuple[DataFrame, DataFrame, dict]:
    steps = Steps()
    logs, bad_logs = c.validate_logs(logs)
    content, bad_content = c.validate_content(content)
    windowed = c.window(logs, data.window_months)
    agg, n = steps.step("aggregate (content, query)", windowed.count(), c.aggregate(windowed))
    exposed, n = steps.step("more than min impressions", n, agg.filter(F.col("impressions") > data.pair_min_impressions))
    a = exposed.select("content_id", *[F.col(x).alias(f"{x}_a") for x in ("query", "impressions", "clicks", "ctr")])
    b = exposed.select("content_id", *[F.col(x).alias(f"{x}_b") for x in ("query", "impressions", "clicks", "ctr")])
    pairs = a.join(b, "content_id").filter(F.col("query_a") < F.col("query_b"))
    schema = c.with_fields(pairs, ("z", DoubleType()), ("p", DoubleType()))
    tested = pairs.mapInPandas(_ztest_udf, schema).cache()
    n_pairs = tested.count()
    significant, n = steps.step("significant (p < alpha)", n_pairs, tested.filter(F.col("p") < data.pair_alpha))
    plus_is_a = F.col("ctr_a") > F.col("ctr_b")
    oriented = significant.select(
        "content_id",
        F.when(plus_is_a, F.col("query_a")).otherwise(F.col("query_b")).alias("y_plus"),
        F.when(plus_is_a, F.col("query_b")).otherwise(F.col("query_a")).alias("y_minus"),
        F.when(plus_is_a, F.col("impressions_a")).otherwise(F.col("impressions_b")).alias("impressions_plus"),
        F.when(plus_is_a, F.col("clicks_a")).otherwise(F.col("clicks_b")).alias("clicks_plus"),
        F.when(plus_is_a, F.col("impressions_b")).otherwise(F.col("impressions_a")).alias("impressions_minus"),
        F.when(plus_is_a, F.col("clicks_b")).otherwise(F.col("clicks_a")).alias("clicks_minus"),
        F.abs("z").alias("z"), "p")
    w = Window.partitionBy("content_id").orderBy(F.col("z").desc(), _rank_key(data.seed, "y_plus", "y_minus"))
    capped, n = steps.step("per-content cap", n,
                           oriented.withColumn("_r", F.row_number().over(w))
                           .filter(F.col("_r") <= data.max_pairs_per_content).drop("_r"))
    joined, bad_unknown = c.with_content(capped, content)
    joined, n = steps.step("join content", n, joined)
    out = joined.join(split.select("content_id", "split"), "content_id").select(*CTR_PAIR_SCHEMA.names)
    counts = c.counts_by(out, "split")
    summary = {"pairs": n, "pairs_tested": n_pairs, "splits": counts, "removed": steps.removed, "sizes": steps.sizes}
    return out, bad_logs.unionByName(bad_content).unionByName(bad_unknown), summary


# --------------------------------------------------------------------------- expansion labels


def build_expansion(content: DataFrame, annotations: DataFrame, split: DataFrame) -> tuple[DataFrame, DataFrame, dict]:
    content, bad_content = c.validate_content(content)
    good, bad = c.split_valid(annotations, "annotations", [
        (F.col("content_id").isNull(), "null_content_id"),
        (F.col("query").isNull() | (F.trim("query") == ""), "null_query"),
        (F.col("label").isNull() | ~F.col("label").isin(0, 1), "label_not_0_or_1"),
    ])
    joined, bad_unknown = c.with_content(good, content)
    out = joined.join(split.select("content_id", "split"), "content_id").select(*EXPANSION_SCHEMA.names).cache()
    balance = {f"{r['split']}": {"rows": int(r["n"]), "positive_rate": round(float(r["pos"]), 4)}
               for r in out.groupBy("split").agg(F.count("*").alias("n"), F.avg("label").alias("pos")).collect()}
    summary = {"rows": sum(v["rows"] for v in balance.values()), "label_balance": balance}
    return out, bad.unionByName(bad_content).unionByName(bad_unknown), summary


# --------------------------------------------------------------------------- load


def write(df: DataFrame, path: Path, sort: tuple[str, ...]) -> int:
    """Write sorted (so the same input gives the same files' rows in the same order)."""
    df.orderBy(*sort).coalesce(1).write.mode("overwrite").parquet(str(path))
    return df.sparkSession.read.parquet(str(path)).count()


def run(kind: str, cfg: CmaqConfig, world: str | None, out: str, spark: SparkSession,
        content: str | None = None, logs: str | None = None, annotations: str | None = None) -> dict:
    """Extract from a world directory (or explicit paths / tables), build, write, summarise."""
    t0 = time.perf_counter()
    content_df = c.read_content(spark, content or f"{world}/content")
    split = c.assign_split(content_df, cfg.data.test_fraction, cfg.data.validation_fraction).cache()
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    if kind == "sft":
        df, bad, summary = build_sft(content_df, c.read_table(spark, logs or f"{world}/logs"), split, cfg.data,
                                     cfg.filters)
        summary["written"] = write(df, out_dir / "sft", ("category", "content_id", "query"))
        test = content_df.join(split.filter("split = 'test'").select("content_id"), "content_id")
        summary["test_contents"] = write(test.select(*c.PROMPT_COLUMNS), out_dir / "test_contents", ("content_id",))
    elif kind == "ctr-pairs":
        df, bad, summary = build_ctr_pairs(content_df, c.read_table(spark, logs or f"{world}/logs"), split, cfg.data)
        summary["written"] = write(df, out_dir / "ctr_pairs", ("content_id", "y_plus", "y_minus"))
    elif kind == "expansion":
        df, bad, summary = build_expansion(content_df, c.read_table(spark, annotations or f"{world}/annotations"), split)
        summary["written"] = write(df, out_dir / "expansion", ("content_id", "query"))
    else:
        raise ValueError(f"unknown builder {kind!r}")
    bad_counts = c.counts_by(bad, "reason")
    summary["bad_rows"] = bad_counts
    write(bad, out_dir / f"bad_rows_{kind}", ("source", "reason", "row"))
    summary.update(kind=kind, seconds=round(time.perf_counter() - t0, 1), config=asdict(cfg.data))
    (out_dir / f"summary_{kind}.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return summary
