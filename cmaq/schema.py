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

# The world's hidden answer key: every grammar query of every item with its kind and true scores.
# Read only by evaluation and tests, like the oracle itself.
GRAMMAR_TRUTH_SCHEMA = pa.schema([
    pa.field("content_id", pa.string(), nullable=False),
    pa.field("query", pa.string(), nullable=False),
    pa.field("kind", pa.string(), nullable=False),
    pa.field("true_ctr", pa.float64(), nullable=False),
    pa.field("true_exp", pa.float64(), nullable=False),
])
