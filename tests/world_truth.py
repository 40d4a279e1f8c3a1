"""The world's whole answer key for tests: the grammar queries and the mistaken exposures."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq


def answer_key(world: Path) -> pd.DataFrame:
    """Every (note, query) the world ever exposed or annotated: content_id, query, source (the grammar
    kind or the mistake's source), true_ctr, true_exp, mistaken."""
    grammar = pq.read_table(Path(world) / "truth/grammar").to_pandas().rename(columns={"kind": "source"})
    mistakes = pq.read_table(Path(world) / "truth/mistakes").to_pandas()
    return pd.concat([grammar.assign(mistaken=False), mistakes.assign(mistaken=True)], ignore_index=True)
