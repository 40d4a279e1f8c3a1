"""Arrow schemas: the contracts between the world, the data builders, the job and the readers.

Add a schema here before a second module writes or reads the table; never widen one silently.
"""
from __future__ import annotations

import pyarrow as pa

# A note on the platform. ``shop_info`` is free text (address, hours, price); ``updated_at`` is UTC.
CONTENT_SCHEMA = pa.schema([
    pa.field("content_id", pa.string(), nullable=False),
    pa.field("lang", pa.string(), nullable=False),
    pa.field("category", pa.string(), nullable=False),
    pa.field("shop_name", pa.string()),
    pa.field("district", pa.string()),
    pa.field("shop_info", pa.string()),
    pa.field("title", pa.string()),
    pa.field("body", pa.string()),
    pa.field("updated_at", pa.timestamp("ms", tz="UTC")),
])
CONTENT_FIELDS = tuple(CONTENT_SCHEMA.names)

# One row per (content, exposed query, month) with at least one impression.
LOG_SCHEMA = pa.schema([
    pa.field("content_id", pa.string(), nullable=False),
    pa.field("query", pa.string(), nullable=False),
    pa.field("month", pa.date32(), nullable=False),
    pa.field("impressions", pa.int64(), nullable=False),
    pa.field("clicks", pa.int64(), nullable=False),
])

# Human expansion judgements: label 1 = the query leads to useful information the note lacks.
ANNOTATION_SCHEMA = pa.schema([
    pa.field("content_id", pa.string(), nullable=False),
    pa.field("query", pa.string(), nullable=False),
    pa.field("label", pa.int8(), nullable=False),
])

def _answer_key(label: str) -> pa.Schema:
    """An answer-key table: (content_id, query) -> ``label`` and the oracle's true scores."""
    return pa.schema([
        pa.field("content_id", pa.string(), nullable=False),
        pa.field("query", pa.string(), nullable=False),
        pa.field(label, pa.string(), nullable=False),
        pa.field("true_ctr", pa.float64(), nullable=False),
        pa.field("true_exp", pa.float64(), nullable=False),
    ])


# The world's hidden answer key: every grammar query of every item with its kind and true scores.
# Read only by evaluation and tests, like the oracle itself.
GRAMMAR_TRUTH_SCHEMA = _answer_key("kind")

# The answer key of what an earlier recommender showed by mistake (cmaq.world.mistakes): other
# notes' queries, popular phrases and malformed text, each judged for the note it was shown under.
MISTAKE_TRUTH_SCHEMA = _answer_key("source")

#: Content fields a content table may lack (older tables, other platforms); readers and the filter chain
#: take them as null.
OPTIONAL_CONTENT_FIELDS = ("district",)

# The content fields every training row carries, so trainers never join.
_CONTENT_FOR_PROMPTS = [
    pa.field("content_id", pa.string(), nullable=False),
    pa.field("lang", pa.string()),
    pa.field("category", pa.string()),
    pa.field("title", pa.string()),
    pa.field("body", pa.string()),
    pa.field("shop_name", pa.string()),
    pa.field("district", pa.string()),  # the serving filters tell a district ("T2航站楼") from a shop-info fact
    pa.field("shop_info", pa.string()),
]

# D_SFT: logged queries that did well, one row per (content, query).
SFT_SCHEMA = pa.schema(_CONTENT_FOR_PROMPTS + [
    pa.field("query", pa.string(), nullable=False),
    pa.field("impressions", pa.int64(), nullable=False),
    pa.field("clicks", pa.int64(), nullable=False),
    pa.field("ctr", pa.float64(), nullable=False),
])

# CTR preference pairs: y_plus was clicked significantly more often than y_minus on the same content.
CTR_PAIR_SCHEMA = pa.schema(_CONTENT_FOR_PROMPTS + [
    pa.field("y_plus", pa.string(), nullable=False),
    pa.field("y_minus", pa.string(), nullable=False),
    pa.field("impressions_plus", pa.int64(), nullable=False),
    pa.field("clicks_plus", pa.int64(), nullable=False),
    pa.field("impressions_minus", pa.int64(), nullable=False),
    pa.field("clicks_minus", pa.int64(), nullable=False),
    pa.field("z", pa.float64(), nullable=False),
    pa.field("p", pa.float64(), nullable=False),
    pa.field("split", pa.string(), nullable=False),
])

# Expansion labels for the expansion reward model.
EXPANSION_SCHEMA = pa.schema(_CONTENT_FOR_PROMPTS + [
    pa.field("query", pa.string(), nullable=False),
    pa.field("label", pa.int8(), nullable=False),
    pa.field("split", pa.string(), nullable=False),
])

# Rows a builder set aside, with the reason; never silently dropped.
BAD_ROW_SCHEMA = pa.schema([
    pa.field("source", pa.string(), nullable=False),
    pa.field("reason", pa.string(), nullable=False),
    pa.field("row", pa.string()),  # the offending row as JSON
])

# --------------------------------------------------------------------------- the recall pool

_POOL_KEYS = [
    pa.field("content_id", pa.string(), nullable=False),
    pa.field("content_hash", pa.string(), nullable=False),
    pa.field("category", pa.string()),
]
_POOL_PROVENANCE = [
    pa.field("model_version", pa.string(), nullable=False),
    pa.field("adapter_version", pa.string(), nullable=False),
    pa.field("config_hash", pa.string(), nullable=False),
    pa.field("run_id", pa.string(), nullable=False),
    pa.field("generated_at", pa.timestamp("ms", tz="UTC"), nullable=False),
]
SCORE_COLUMNS = ("score_lexical", "score_harm", "score_commercial", "score_similarity", "score_relevance")

# A served query: up to 5 per content, rank 0 first.
POOL_SCHEMA = pa.schema(_POOL_KEYS + [
    pa.field("rank", pa.int32(), nullable=False),
    pa.field("query", pa.string(), nullable=False),
    pa.field("logprob", pa.float64(), nullable=False),
    *[pa.field(c, pa.float64()) for c in SCORE_COLUMNS],
] + _POOL_PROVENANCE)

# A generated candidate a filter removed, with the reason code.
DROPPED_SCHEMA = pa.schema(_POOL_KEYS + [
    pa.field("rank", pa.int32(), nullable=False),
    pa.field("query", pa.string()),
    pa.field("reason", pa.string(), nullable=False),
] + _POOL_PROVENANCE)

# An item that could not be processed at all (empty, over-long, engine error, ...).
QUARANTINE_SCHEMA = pa.schema(_POOL_KEYS + [
    pa.field("reason", pa.string(), nullable=False),
    pa.field("detail", pa.string()),
] + _POOL_PROVENANCE)

# A pool served as A/B arms (``[pool.arms]``): every table's rows carry their arm, right after the
# content id. A pool without arms keeps the schemas above.
ARM_FIELD = pa.field("arm", pa.string(), nullable=False)


def with_arm(schema: pa.Schema) -> pa.Schema:
    """``schema`` with the ``arm`` column after ``content_id``."""
    return schema.insert(schema.get_field_index("content_id") + 1, ARM_FIELD)
