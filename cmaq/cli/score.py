"""`cmaq score`: both reward models' scores on the current pool version, for analysis. An entry point:
it reads the pool with Spark (``jobs``) and scores it with the trainers' scorer (``training``)."""
from __future__ import annotations

from pathlib import Path

import click
import numpy as np
import pandas as pd

from cmaq.cli.settings import BadInput, echo_json
from cmaq.pool.versions import current_version
from jobs.pool_tables import version_frames
from jobs.spark import get_spark
from training.reward_models.scorer import RewardScorer


@click.command("score")
@click.option("--pool", "pool_root", required=True, type=click.Path(exists=True, file_okay=False),
              help="Pool root; its current version is scored.")
@click.option("--content", required=True, help="Content Parquet the pool was built from (prompts need the text).")
@click.option("--rm-exp", "exp_dir", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--rm-ctr", "ctr_dir", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--out", required=True, help="Output Parquet: the pool's rows plus r_exp, r_ctr_raw, r_ctr.")
@click.option("--normalisation", type=click.Choice(["sigmoid", "minmax", "calibrated"]), default=None,
              help="How r_ctr is mapped into [0, 1] (default: the one the CTR RM was trained for).")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(1, 4096))
def score(pool_root: str, content: str, exp_dir: str, ctr_dir: str, out: str, normalisation: str,
          batch_size: int) -> None:
    """Add both reward models' scores to the current pool version, for analysis."""
    try:
        scorer = RewardScorer(exp_dir, ctr_dir, batch_size=batch_size, normalisation=normalisation)
        summary = score_pool(scorer, pool_root, content, out)
    except (FileNotFoundError, ValueError) as exc:
        raise BadInput(str(exc)) from None
    echo_json(summary)


def score_pool(scorer: RewardScorer, pool_root: str, content_path: str, out: str) -> dict:
    """The current pool version's served rows with r_exp, r_ctr_raw and r_ctr, written to ``out``."""
    version = current_version(pool_root)
    if version is None:
        raise FileNotFoundError(f"{pool_root}: no published pool version")
    spark = get_spark("cmaq-score")
    pool = version_frames(spark, Path(pool_root) / "versions" / version)["pool"].toPandas()
    content = pd.read_parquet(content_path)
    fields = [c for c in ("content_id", "lang", "title", "body", "shop_name", "shop_info") if c in content]
    items = pool[["content_id"]].merge(content[fields].drop_duplicates("content_id"), on="content_id", how="left")
    missing = items["title"].isna() & items["body"].isna()
    if missing.all() and len(items):
        raise ValueError(f"{content_path}: none of the pool's items are in this content table")
    scores = scorer.score(items.to_dict("records"), pool["query"].tolist())
    pool = pool.assign(r_exp=scores.r_exp, r_ctr_raw=scores.r_ctr_raw, r_ctr=scores.r_ctr)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    pool.to_parquet(out, index=False)
    return {"version": version, "rows": len(pool), "items_without_content": int(missing.sum()), "out": str(out),
            "mean_r_exp": round(float(np.nanmean(scores.r_exp)), 4) if len(pool) else None,
            "mean_r_ctr": round(float(np.nanmean(scores.r_ctr)), 4) if len(pool) else None}
