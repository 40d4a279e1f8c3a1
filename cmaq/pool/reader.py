"""The online reader: ``Reader(url).get(content_id)`` resolves the cache's pointer, then reads the
item, so it always sees one complete version. Needs only the standard library and ``redis``."""
from __future__ import annotations

import json
from dataclasses import dataclass

from cmaq.pool.sinks import open_sink

@dataclass
class Lookup:
    content_id: str
    version: str | None
    queries: list[dict]
    hit: bool


class Reader:
    """``Reader(url).get(content_id)``: the current version's queries for a content, or a miss."""

    def __init__(self, url: str, prefix: str = "cmaq"):
        self.sink = open_sink(url, prefix)

    def get(self, content_id: str) -> Lookup:
        version = self.sink.pointer()
        if version is None:
            return Lookup(content_id, None, [], False)
        raw = self.sink.get(version, content_id)
        if raw is None:
            return Lookup(content_id, version, [], False)
        value = json.loads(raw)
        return Lookup(content_id, version, value["queries"], True)
