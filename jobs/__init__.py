"""spark-submit entry points (nightly pool, nearline refresh, data builders): extract, transform, load."""
