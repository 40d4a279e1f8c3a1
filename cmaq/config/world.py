"""``[world]``: the synthetic platform (:mod:`cmaq.world`)."""
from __future__ import annotations

from dataclasses import dataclass

from cmaq.config.loader import field_help, require


@dataclass
class WorldConfig:
    """The synthetic local-lifestyle platform (:mod:`cmaq.world`)."""

    seed: int = field_help("Seed of the world; same seed and size give byte-identical files.", default=7)
    items: int = field_help("Number of content items (notes) to generate.", default=3000)
    zh_fraction: float = field_help("Fraction of items written in Chinese (the rest English).", default=0.4)
    months: int = field_help("Months of impression/click history per item.", default=12)
    end_month: str = field_help("Last month of the log history, YYYY-MM.", default="2026-10")
    annotator_noise: float = field_help(
        "Probability that an expansion annotation is flipped (a perfect classifier then scores "
        "about 1 - noise).", default=0.15)
    annotated_fraction: float = field_help("Fraction of items that receive expansion annotations.", default=0.5)
    annotations_per_item: int = field_help("Queries annotated per annotated item.", default=4)
    exposed_min: int = field_help("Fewest grammar queries an item has ever exposed in the logs.", default=4)
    exposed_max: int = field_help("Most grammar queries an item has ever exposed in the logs.", default=9)
    mistaken_share: float = field_help(
        "Share of a note's exposed queries that an earlier recommender showed by mistake: other notes' "
        "queries (same category, same district, other shops' names), phrases popular everywhere and a "
        "little malformed text. Their clicks follow the oracle's CTR for the note they were shown under.",
        default=0.3)
    annotated_mistaken_share: float = field_help(
        "Expected share of annotated pairs drawn from the mistaken exposures rather than the note's own "
        "grammar queries.", default=0.3)
    chunk_items: int = field_help(
        "Items generated and written per chunk (bounds memory; one Parquet row group each).",
        default=4096)
    items_per_file: int = field_help("Items per Parquet part file (a multiple of chunk_items is tidiest).",
                                     default=100_000)

    def __post_init__(self) -> None:
        require(self.items >= 1, "items", f"must be >= 1, got {self.items}")
        require(0 <= self.seed < 2**31, "seed", f"must be in [0, 2^31), got {self.seed}")
        require(0.0 <= self.zh_fraction <= 1.0, "zh_fraction", f"must be in [0, 1], got {self.zh_fraction}")
        require(1 <= self.months <= 120, "months", f"must be in [1, 120], got {self.months}")
        try:
            year, month = (int(p) for p in self.end_month.split("-"))
            ok = 1 <= month <= 12 and 1970 <= year <= 2200
        except ValueError:
            ok = False
        require(ok, "end_month", f"must look like YYYY-MM, got {self.end_month!r}")
        require(0.0 <= self.annotator_noise < 0.5, "annotator_noise",
                 f"must be in [0, 0.5), got {self.annotator_noise}")
        require(0.0 <= self.annotated_fraction <= 1.0, "annotated_fraction",
                 f"must be in [0, 1], got {self.annotated_fraction}")
        require(1 <= self.annotations_per_item <= 12, "annotations_per_item",
                 f"must be in [1, 12], got {self.annotations_per_item}")
        require(1 <= self.exposed_min <= self.exposed_max <= 12, "exposed_min",
                 f"need 1 <= exposed_min <= exposed_max <= 12, got {self.exposed_min}, {self.exposed_max}")
        require(0.0 <= self.mistaken_share <= 0.8, "mistaken_share",
                 f"must be in [0, 0.8], got {self.mistaken_share}")
        require(0.0 <= self.annotated_mistaken_share <= 1.0, "annotated_mistaken_share",
                 f"must be in [0, 1], got {self.annotated_mistaken_share}")
        require(self.chunk_items >= 1, "chunk_items", f"must be >= 1, got {self.chunk_items}")
        require(self.items_per_file >= 1, "items_per_file", f"must be >= 1, got {self.items_per_file}")
