"""The online reader: ``Reader(url).get(content_id)`` resolves the cache's pointer, then reads the
item, so it always sees one complete version. Needs only the standard library and ``redis``.

A version that serves A/B arms needs the arm: ``Reader(url).get(content_id, arm="cmaq")``, or
``reader.get(content_id, arm=reader.assign(user_id))`` to split traffic by the version's own
published weights and salt (:func:`cmaq.pool.arms.assign_arm`)."""
from __future__ import annotations

import json
from dataclasses import dataclass

from cmaq.pool.arms import assign_arm
from cmaq.pool.sinks import ARMS_ITEM, item_id, open_sink

@dataclass
class Lookup:
    content_id: str
    version: str | None
    queries: list[dict]
    hit: bool
    arm: str | None = None


@dataclass(frozen=True)
class TrafficSplit:
    """A version's arms with their traffic weights and the split's salt."""

    weights: dict
    salt: str

    def assign(self, unit_id: str) -> str:
        return assign_arm(unit_id, self.weights, self.salt)


class Reader:
    """``Reader(url).get(content_id[, arm])``: the current version's queries for a content, or a miss."""

    def __init__(self, url: str, prefix: str = "cmaq"):
        self.sink = open_sink(url, prefix)
        self._splits: dict[str, TrafficSplit | None] = {}

    def split(self, version: str | None = None) -> TrafficSplit | None:
        """The traffic split published with ``version`` (the current one by default); None for a
        version without arms."""
        version = version or self.sink.pointer()
        if version is None:
            return None
        if version not in self._splits:  # a version's split never changes: read it once
            raw = self.sink.get(version, ARMS_ITEM)
            value = json.loads(raw) if raw is not None else None
            self._splits[version] = TrafficSplit(value["weights"], value["salt"]) if value else None
        return self._splits[version]

    def assign(self, unit_id: str) -> str:
        """The arm that serves ``unit_id`` under the current version's split."""
        split = self.split()
        if split is None:
            raise ValueError("the current version serves no arms")
        return split.assign(unit_id)

    def get(self, content_id: str, arm: str | None = None) -> Lookup:
        version = self.sink.pointer()
        if version is None:
            return Lookup(content_id, None, [], False, arm)
        split = self.split(version)
        if split is None and arm is not None:
            raise ValueError(f"version {version} serves no arms; read it without one")
        if split is not None and arm not in split.weights:
            raise ValueError(f"version {version} serves arms {', '.join(sorted(split.weights))}: "
                             + ("name one" if arm is None else f"not {arm!r}"))
        raw = self.sink.get(version, item_id(content_id, arm))
        if raw is None:
            return Lookup(content_id, version, [], False, arm)
        value = json.loads(raw)
        return Lookup(content_id, version, value["queries"], True, arm)
