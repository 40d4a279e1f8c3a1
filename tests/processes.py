"""Killing a job the way a machine dies, and waiting until nothing of it is left.

A SIGKILLed process group is not the whole job: pyspark's worker daemon moves itself into a process
group of its own, so its Python workers outlive the JVM for a moment and can still commit a partition
after the kill. Tests that count what a killed run committed therefore kill the whole process tree and
wait until every process of it is gone (Linux ``/proc``)."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path


def _parents() -> dict[int, int]:
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # the command name (field 2) is in parentheses and may hold spaces: split after it
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # the process ended while we read
        parents[int(stat.parent.name)] = int(fields[1])
    return parents


def descendants(pid: int) -> set[int]:
    """Every living process below ``pid``, whatever process group or session it moved to."""
    children: dict[int, list[int]] = {}
    for child, parent in _parents().items():
        children.setdefault(parent, []).append(child)
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")  # a zombie has stopped running; only its parent's wait is missing


def wait_gone(pids: set[int], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while any(_alive(p) for p in pids):
        if time.monotonic() > deadline:
            raise TimeoutError(f"processes still running {timeout_s:.0f} s after the kill: "
                               f"{sorted(p for p in pids if _alive(p))}")
        time.sleep(0.1)


def kill_tree(proc: subprocess.Popen, timeout_s: float = 60.0) -> None:
    """SIGKILL ``proc`` (started with ``start_new_session=True``), its process group and every process
    below it, then wait until none of them runs any more."""
    tree = descendants(proc.pid)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for pid in tree | descendants(proc.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()
    wait_gone(tree, timeout_s)
