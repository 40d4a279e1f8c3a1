"""``[data]`` and ``[pool]``: the Spark programs in :mod:`jobs` (training-data builders, the recall-pool job)."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from cmaq.config.loader import field_help, require


@dataclass
class DataConfig:
    """Training-data builders on Spark (jobs.data): D_SFT, CTR pairs, expansion labels."""

    seed: int = field_help("Seed for tie-breaks and sampling; same seed, same output.", default=0)
    window_months: int = field_help("Months of logs aggregated, ending at the newest month present.", default=12)
    min_impressions: int = field_help("D_SFT: least impressions a (content, query) needs (minimum exposure).",
                                      default=50)
    ctr_percentile_cutoff: float = field_help("D_SFT: drop entries whose CTR is below this percentile (0-1).",
                                              default=0.3)
    per_category_cap: int = field_help("D_SFT: most rows kept per category after ranking.", default=10_000)
    exposure_weight: float = field_help(
        "D_SFT ranking: score = ctr + exposure_weight * log10(impressions); CTR first, exposure as the "
        "auxiliary signal.", default=0.01)
    test_fraction: float = field_help("Share of contents held out for evaluation (by normalised content text).",
                                      default=0.2)
    validation_fraction: float = field_help(
        "Share of contents held out for model selection (early stopping, calibration, ensemble choices); "
        "never used for a reported metric.", default=0.1)
    pair_min_impressions: int = field_help("CTR pairs: each query needs more than this many impressions.",
                                           default=100)
    pair_alpha: float = field_help("CTR pairs: keep pairs whose two-proportion z-test p-value is below this.",
                                   default=0.01)
    max_pairs_per_content: int = field_help("CTR pairs: most pairs per content (largest |z| first).", default=10)

    def __post_init__(self) -> None:
        require(1 <= self.window_months <= 120, "window_months", f"must be in [1, 120], got {self.window_months}")
        require(self.min_impressions >= 0, "min_impressions", "must be >= 0")
        require(0.0 <= self.ctr_percentile_cutoff < 1.0, "ctr_percentile_cutoff", "must be in [0, 1)")
        require(self.per_category_cap >= 1, "per_category_cap", "must be >= 1")
        require(0.0 < self.test_fraction < 1.0, "test_fraction", "must be in (0, 1)")
        require(0.0 <= self.validation_fraction < 1.0 - self.test_fraction, "validation_fraction",
                 f"must be in [0, 1 - test_fraction), got {self.validation_fraction}")
        require(self.pair_min_impressions >= 0, "pair_min_impressions", "must be >= 0")
        require(0.0 < self.pair_alpha < 1.0, "pair_alpha", "must be in (0, 1)")
        require(self.max_pairs_per_content >= 1, "max_pairs_per_content", "must be >= 1")


ARM_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")


@dataclass
class ArmConfig:
    """One arm of an A/B test served by the same nightly: ``[pool.arms.<name>]``."""

    adapter: str = field_help("PEFT adapter directory this arm serves, or 'none' for the bare base model.",
                              default="none")
    weight: float = field_help("Traffic weight: the arm gets weight / (sum of weights) of the units "
                               "(cmaq.pool.arms.assign_arm). 0 keeps the arm generated but unserved.", default=1.0)

    def __post_init__(self) -> None:
        require(bool(self.adapter.strip()), "adapter", "must be an adapter directory or 'none'")
        require(self.weight >= 0 and self.weight == self.weight and self.weight != float("inf"), "weight",
                f"must be a finite number >= 0, got {self.weight}")

    @property
    def adapter_dir(self) -> str | None:
        return None if self.adapter.strip().lower() == "none" else self.adapter


@dataclass
class PoolConfig:
    """The recall-pool job (jobs/nightly.py, `cmaq pool build`)."""

    root: str = field_help("Pool root: versions/, staging/, runs/ and the `current` pointer live here.",
                           default="pool")
    adapter: str = field_help("PEFT adapter directory served by the job; empty serves the bare base model.",
                              default="")
    arms: dict[str, ArmConfig] = field_help(
        "A/B arms served side by side: [pool.arms.<name>] tables, each with an adapter and a traffic weight. "
        "Every row then carries its arm and the cache one value per (arm, content). Empty: one arm serving "
        "pool.adapter, with no arm column and today's cache keys.", default_factory=dict)
    traffic_salt: str = field_help(
        "Salt of the traffic split between arms, published with the version: a new salt draws a new, "
        "independent split (a new experiment); keep it to keep each unit on its arm.", default="cmaq-arms")
    partitions: int = field_help(
        "Generation partitions P: each item goes to pmod(hash(content_id), P), one Spark task each, all in "
        "one stage. 0 = ceil(items to generate / items_per_partition). Keep P >= 8 x engine slots so the "
        "last tasks of the stage are short (the stage's tail is idle engine time).", default=0)
    items_per_partition: int = field_help(
        "Target items per generation partition when pool.partitions = 0. A partition is the unit of commit "
        "and of redo: a crash or kill redoes at most the partitions in flight, a smaller one costs more "
        "task launches (about 10-50 ms each).", default=500)
    engine_batch: int = field_help(
        "Items per engine call inside a task. Larger batches keep a GPU engine busy (vLLM schedules the "
        "whole call); each call is also the unit a dead engine redoes and a crash hunt starts from.",
        default=256)
    max_engine_restarts: int = field_help(
        "Times one task may close and rebuild a dead engine before it fails (Spark's task retry then "
        "starts with no cached engine).", default=2)
    progress_every_s: float = field_help("Seconds between the driver's progress lines while generating.",
                                         default=30.0)
    max_quarantine_rate: float = field_help("Gate: most items that may be quarantined (0-1).", default=0.05)
    max_volume_change: float = field_help(
        "Gate: largest relative change of pool rows against the previous version (0-1); the first "
        "version is exempt.", default=0.5)
    keep_versions: int = field_help("Published versions kept on disk (older ones are removed after publishing).",
                                    default=3)
    catalog: str = field_help(
        "Where the current version's views (cmaq_pool_current, ...) are registered for Spark SQL clients: "
        "'embedded' (a Derby metastore under <root>/catalog; one session at a time may open it), 'hive' "
        "(the Hive metastore at pool.metastore_uri) or 'none'.", default="embedded")
    catalog_db: str = field_help("Catalog database of the views.", default="cmaq")
    metastore_uri: str = field_help("Hive metastore (thrift://host:9083) when pool.catalog = 'hive'.", default="")
    kv_url: str = field_help("Key-value cache the job loads after the gates: redis://, rediss:// or sqlite:///path. "
                             "Empty: the embedded default sqlite:///<root>/kv.db; 'none': no cache.", default="")
    kv_prefix: str = field_help("Key prefix in the cache: keys are {prefix}:{version}:{content_id}.", default="cmaq")
    kv_keep: int = field_help("Versions kept in the cache for rollback (the current one included).", default=2)
    kv_grace_s: float = field_help(
        "Seconds a version dropped from the cache stays readable (Redis: EXPIRE on its keys; SQLite: "
        "deleted at the first write after the grace), so a reader that resolved the old pointer just "
        "before it moved still finds its item. 0 removes it at once (UNLINK).", default=300.0)
    lease_ttl_s: float = field_help("Seconds a writer's lease lasts; a crashed writer's lease expires after it.",
                                    default=7200.0)
    compact_every: int = field_help(
        "Fold a version's nearline deltas into one once it has this many (reading a version joins each "
        "delta's items; compaction keeps that to a few). 0: never by count.", default=50)
    compact_every_min: float = field_help(
        "Also fold them once the oldest is this many minutes old. 0: never by age.", default=60.0)
    lease_wait_s: float = field_help(
        "Seconds a writer (nightly, refresh, purge, rollback) waits for the lease when another writer holds "
        "it, polling each second, before it fails naming the holder; 0 fails at once. A refresh or stream "
        "batch holds it for seconds to minutes, a nightly for its whole run.", default=600.0)

    def kv(self) -> str | None:
        """The effective cache URL, or None when disabled."""
        if self.kv_url.lower() == "none":
            return None
        return self.kv_url or f"sqlite:///{Path(self.root).resolve()}/kv.db"

    def __post_init__(self) -> None:
        for name in self.arms:
            require(bool(ARM_NAME.match(name)), "arms",
                    f"arm name {name!r}: lower-case letters, digits, '-' and '_', at most 32, starting with a "
                    f"letter or digit")
        if self.arms:
            require(not self.adapter, "adapter", "set each arm's adapter under [pool.arms.<name>], not "
                                                 "pool.adapter, when arms are configured")
            require(any(a.weight > 0 for a in self.arms.values()), "arms", "every arm has traffic weight 0")
        require(self.catalog in ("embedded", "hive", "none"), "catalog",
                f"must be 'embedded', 'hive' or 'none', got {self.catalog!r}")
        require(self.catalog != "hive" or self.metastore_uri.startswith("thrift://"), "metastore_uri",
                "must be thrift://host:port when pool.catalog is 'hive'")
        require(bool(re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", self.catalog_db)), "catalog_db",
                f"must be a plain identifier, got {self.catalog_db!r}")
        require(self.partitions >= 0, "partitions", "must be >= 0 (0: from items_per_partition)")
        require(self.items_per_partition >= 1, "items_per_partition", "must be >= 1")
        require(self.engine_batch >= 1, "engine_batch", "must be >= 1")
        require(self.max_engine_restarts >= 0, "max_engine_restarts", "must be >= 0")
        require(self.progress_every_s > 0, "progress_every_s", "must be > 0")
        require(0.0 <= self.max_quarantine_rate <= 1.0, "max_quarantine_rate", "must be in [0, 1]")
        require(self.max_volume_change >= 0.0, "max_volume_change", "must be >= 0")
        require(self.keep_versions >= 1, "keep_versions", "must be >= 1")
        require(self.kv_keep >= 1, "kv_keep", "must be >= 1")
        require(self.lease_ttl_s > 0, "lease_ttl_s", "must be > 0")
        require(self.lease_wait_s >= 0, "lease_wait_s", "must be >= 0")
        require(self.compact_every >= 0, "compact_every", "must be >= 0 (0: never by count)")
        require(self.compact_every_min >= 0, "compact_every_min", "must be >= 0 (0: never by age)")
        require(self.kv_grace_s >= 0, "kv_grace_s", "must be >= 0")


STREAM_SOURCES = ("files", "kafka")


@dataclass
class StreamConfig:
    """Nearline as a stream (jobs/stream.py, `cmaq pool stream`): new and updated notes from a drop
    directory (or Kafka) into the current pool version, one delta per micro-batch."""

    source: str = field_help(
        "'files': a drop directory producers rename Parquet or JSON-lines files into; 'kafka': a topic whose "
        "values are JSON objects of the same fields (needs the spark-sql-kafka package; untested here).",
        default="files")
    dir: str = field_help("The stream's own directory (drop/, accepted/, quarantine/, checkpoint/, state); "
                          "empty: <pool.root>/stream.", default="")
    trigger_s: float = field_help(
        "Seconds between micro-batches. Each batch costs a few Spark jobs and a delta (about 1-3 s on a "
        "laptop before generation); shorter triggers add deltas, not speed.", default=5.0)
    max_files_per_trigger: int = field_help(
        "Most accepted files one micro-batch reads: bounds a batch's generation time after a backlog.",
        default=50)
    intake_poll_s: float = field_help("Seconds between scans of the drop directory for new files.", default=1.0)
    views_every_s: float = field_help(
        "Seconds between re-creations of the catalog's views (cmaq_pool_current, ...) while the stream "
        "publishes: they follow the cache within this long. Re-creating them costs 1-3 s on the embedded "
        "metastore; 0 does it with every micro-batch.", default=60.0)
    kafka_bootstrap_servers: str = field_help("Kafka brokers (host:port,...) when source = 'kafka'.", default="")
    kafka_topic: str = field_help("Kafka topic when source = 'kafka'.", default="")
    kafka_starting_offsets: str = field_help("'earliest' or 'latest' for a stream with no checkpoint yet.",
                                             default="earliest")

    def root(self, pool_root: str) -> Path:
        return Path(self.dir) if self.dir else Path(pool_root) / "stream"

    def status_file(self, pool_root: str) -> Path:
        """What the running stream last reported (``cmaq pool status`` prints it)."""
        return self.root(pool_root) / "status.json"

    def __post_init__(self) -> None:
        require(self.source in STREAM_SOURCES, "source", f"must be one of {', '.join(STREAM_SOURCES)}, "
                                                         f"got {self.source!r}")
        require(self.trigger_s > 0, "trigger_s", "must be > 0")
        require(self.max_files_per_trigger >= 1, "max_files_per_trigger", "must be >= 1")
        require(self.intake_poll_s > 0, "intake_poll_s", "must be > 0")
        require(self.views_every_s >= 0, "views_every_s", "must be >= 0 (0: every micro-batch)")
        require(self.source != "kafka" or bool(self.kafka_bootstrap_servers and self.kafka_topic),
                "kafka_topic", "source = 'kafka' needs kafka_bootstrap_servers and kafka_topic")
        require(self.kafka_starting_offsets in ("earliest", "latest"), "kafka_starting_offsets",
                "must be 'earliest' or 'latest'")
