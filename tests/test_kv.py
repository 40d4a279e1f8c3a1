"""KV sinks on a real redis-server and on SQLite: versioned loads, verified pointer moves, readers."""
import threading
from pathlib import Path

import pytest

from cmaq.pool.loader import load_version
from cmaq.pool.reader import Reader
from cmaq.pool.sinks import encode_value, open_sink, redact_url


@pytest.fixture(params=["redis", "sqlite"])
def url(request, tmp_path):
    if request.param == "redis":
        import redis

        u = request.getfixturevalue("redis_url")
        redis.Redis.from_url(u).flushdb()
        return u
    return f"sqlite:///{tmp_path}/kv.db"


def _items(version, n, tag=""):
    return [(f"c{i:05d}", encode_value(f"c{i:05d}", version, [{"query": f"q{i}{tag}", "rank": 0}])) for i in range(n)]


def test_load_verify_and_read(url):
    sink = open_sink(url)
    items = _items("v1", 500)
    report = load_version(sink, "v1", iter(items), expected=500, sample=items[:5])
    assert report["items"] == 500 and "test-secret" not in report["url"]
    hit = Reader(url).get("c00007")
    assert hit.hit and hit.version == "v1" and hit.queries[0]["query"] == "q7"
    miss = Reader(url).get("nope")
    assert not miss.hit and miss.version == "v1"


def test_a_failed_load_never_moves_the_pointer(url):
    sink = open_sink(url)
    load_version(sink, "v1", iter(_items("v1", 100)), expected=100, sample=[])

    def broken():
        yield from _items("v2", 50)
        raise IOError("connection lost midway")

    with pytest.raises(IOError):
        load_version(sink, "v2", broken(), expected=100, sample=[])
    assert sink.pointer() == "v1"
    with pytest.raises(RuntimeError, match="incomplete"):
        load_version(sink, "v3", iter(_items("v3", 99)), expected=100, sample=[])
    assert sink.pointer() == "v1" and Reader(url).get("c00001").version == "v1"


def test_readers_see_one_complete_version_during_a_load(url):
    sink = open_sink(url)
    load_version(sink, "v1", iter(_items("v1", 300, "-old")), expected=300, sample=[])
    seen, stop = [], threading.Event()

    def poll():
        reader = Reader(url)
        while not stop.is_set():
            hit = reader.get("c00299")
            seen.append((hit.version, hit.queries[0]["query"] if hit.hit else None))

    t = threading.Thread(target=poll)
    t.start()
    load_version(sink, "v2", iter(_items("v2", 300, "-new")), expected=300, sample=[])
    stop.set()
    t.join()
    assert seen
    assert all((v, q) in {("v1", "q299-old"), ("v2", "q299-new")} for v, q in seen)


def test_old_versions_are_dropped(url):
    sink = open_sink(url)
    for v in ("v1", "v2", "v3"):
        load_version(sink, v, iter(_items(v, 20)), expected=20, sample=[], keep=2)
    assert sink.versions() == ["v2", "v3"] and sink.count("v1") == 0


def test_old_versions_stay_readable_for_the_grace_period(url):
    import time

    sink = open_sink(url)
    for v in ("v1", "v2", "v3"):
        report = load_version(sink, v, iter(_items(v, 20)), expected=20, sample=[], keep=2, grace_s=1)
    assert report["retired"] == ["v1"] and sink.versions() == ["v2", "v3"]
    assert sink.get("v1", "c00003") is not None  # a reader that resolved v1 just before still finds it
    time.sleep(2.2)
    load_version(sink, "v4", iter(_items("v4", 20)), expected=20, sample=[], keep=2, grace_s=1)
    assert sink.get("v1", "c00003") is None and sink.count("v1") == 0
    assert sink.get("v2", "c00003") is not None  # retired by this load: inside its own grace


def test_kv_size_estimate(url):
    from cmaq.pool.loader import estimate_size

    sink = open_sink(url)
    with pytest.raises(LookupError):
        estimate_size(sink)
    small = [(f"c{i:05d}", encode_value(f"c{i:05d}", "v1", [{"query": "q" * 10, "rank": 0}])) for i in range(100)]
    load_version(sink, "v1", iter(small), expected=100, sample=[])
    est_small = estimate_size(sink, sample=50)
    assert est_small["items"] == 100 and est_small["sampled"] == 50
    assert est_small["bytes_per_item_mean"] >= len(small[0][1])
    assert est_small["two_versions_bytes"] == 2 * est_small["version_bytes"]
    big = [(f"c{i:05d}", encode_value(f"c{i:05d}", "v2", [{"query": "q" * 400, "rank": r} for r in range(5)]))
           for i in range(100)]
    load_version(sink, "v2", iter(big), expected=100, sample=[])
    assert estimate_size(sink, sample=50)["bytes_per_item_mean"] > est_small["bytes_per_item_mean"] + 1500


def test_passwords_are_redacted():
    assert redact_url("redis://:s3cret@10.0.0.1:6379/0") == "redis://:***@10.0.0.1:6379/0"
    assert redact_url("rediss://user:pw@h:1/2") == "rediss://user:***@h:1/2"
    with pytest.raises(ValueError) as err:
        open_sink("http://:s3cret@host/x")
    assert "s3cret" not in str(err.value)


def test_single_writer_lease(url):
    import time

    from cmaq.pool.lease import Lease, LeaseHeld

    sink = open_sink(url)
    with Lease(sink, "nightly-1", ttl_s=30):
        with pytest.raises(LeaseHeld, match="nightly-1"):
            with Lease(open_sink(url), "nearline-7", ttl_s=30):
                pass
    with Lease(sink, "nearline-7", ttl_s=30):  # released on exit
        pass
    # a crashed writer (never released) loses the lease when it expires
    assert sink.acquire("writer", "crashed", 0.3) is None
    assert sink.acquire("writer", "purge-2", 30) == "crashed"
    time.sleep(0.5)
    assert sink.acquire("writer", "purge-2", 30) is None
    sink.release("writer", "purge-2")


def test_the_online_reader_needs_only_the_standard_library_and_redis(tmp_path):
    """A serving host installs redis and the package; the reader must not pull in numpy, pandas, Arrow,
    click or the filters' native libraries."""
    import subprocess
    import sys

    from conftest import REPO

    url = f"sqlite:///{tmp_path}/kv.db"
    sink = open_sink(url)
    sink.write("v1", [("c1", encode_value("c1", "v1", [{"rank": 0, "query": "dim sum nearby"}]))])
    sink.set_pointer("v1")
    probe = (
        "import importlib.abc, sys\n"
        "blocked = {'numpy', 'pandas', 'pyarrow', 'click', 'rapidfuzz', 'ahocorasick', 'pyspark', 'torch'}\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in blocked:\n"
        "            raise ImportError(name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from cmaq.pool.reader import Reader\n"
        f"print(Reader({url!r}).get('c1').queries[0]['query'])\n")
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "dim sum nearby", out.stderr[-2000:]


def test_a_writer_waits_for_the_lease_then_takes_it_or_names_the_holder(tmp_path):
    import threading
    import time

    from cmaq.pool.lease import FileLeaseStore, Lease, LeaseHeld

    store = FileLeaseStore(tmp_path)
    holder = Lease(store, "nightly-1", ttl_s=60)
    holder.__enter__()
    threading.Timer(0.6, holder.__exit__, (None, None, None)).start()
    t0 = time.monotonic()
    with Lease(FileLeaseStore(tmp_path), "stream-batch-3", ttl_s=60, wait_s=5, poll_s=0.05):
        waited = time.monotonic() - t0
        assert FileLeaseStore(tmp_path).acquire("writer", "purge-2", 60) == "stream-batch-3"
    assert 0.5 <= waited < 5  # took it as soon as the nightly let go
    with Lease(store, "nightly-1", ttl_s=60):
        with pytest.raises(LeaseHeld, match=r"nightly-1 \(waited 0.2 s\)"):
            with Lease(store, "nearline-7", ttl_s=60, wait_s=0.2, poll_s=0.05):
                pass


def test_the_lock_file_lease_without_a_cache(tmp_path):
    import subprocess
    import sys
    import time

    from cmaq.config import PoolConfig
    from cmaq.pool.lease import LEASE_FILE, FileLeaseStore, LeaseHeld, writer_lease

    cfg = PoolConfig(root=str(tmp_path), kv_url="none", lease_wait_s=0)
    with writer_lease(cfg, "nightly-1"):
        assert (tmp_path / LEASE_FILE).exists()
        with pytest.raises(LeaseHeld, match="nightly-1"):
            with writer_lease(cfg, "nearline-7"):
                pass
    assert not (tmp_path / LEASE_FILE).exists()  # released on exit
    store = FileLeaseStore(tmp_path)
    # a crashed writer's lease expires after its TTL
    assert store.acquire("writer", "crashed", 0.3) is None
    assert store.acquire("writer", "purge-2", 30) == "crashed"
    time.sleep(0.4)
    assert store.acquire("writer", "purge-2", 30) is None
    store.release("writer", "purge-2")
    # a writer killed on this host frees it at once (its process is gone), however long its TTL
    code = ("import os, sys; sys.path.insert(0, sys.argv[2]); from cmaq.pool.lease import FileLeaseStore; "
            "FileLeaseStore(sys.argv[1]).acquire('writer', 'killed-nightly', 7200); os._exit(9)")
    subprocess.run([sys.executable, "-c", code, str(tmp_path), str(Path(__file__).resolve().parents[1])])
    assert "killed-nightly" in (tmp_path / LEASE_FILE).read_text()
    assert store.acquire("writer", "rerun", 30) is None
