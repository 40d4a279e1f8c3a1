"""A throw-away redis-server on a free loopback port (never the system's 6379), for tests, benchmarks
and trying the Redis sink on one machine. Needs the ``redis-server`` binary (Debian: redis-server)."""
from __future__ import annotations

import shutil
import socket
import subprocess
import time
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def local_redis(password: str | None = None, maxmemory: str | None = None) -> Iterator[str]:
    """Start redis-server without persistence, yield its URL, stop it afterwards."""
    import redis

    server = shutil.which("redis-server")
    if server is None:
        raise FileNotFoundError("redis-server is not installed (Debian/Ubuntu: apt-get install redis-server; "
                                ".ci/run installs it)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    if password:
        cmd += ["--requirepass", password]
    if maxmemory:
        cmd += ["--maxmemory", maxmemory]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://{':' + password + '@' if password else ''}127.0.0.1:{port}/0"
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis.from_url(url).ping()
                break
            except redis.exceptions.ConnectionError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"redis-server did not start on port {port}") from None
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
