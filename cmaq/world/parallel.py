"""An ordered map over worker processes, for the world generator's chunks.

Kept apart from :mod:`cmaq.world.generate` on purpose: how many processes make a world changes
nothing in it (each chunk depends only on its arguments), so this module is not one of the sources
the truth's hash covers (``cmaq.world.oracle.TRUTH_SOURCES``).
"""
from __future__ import annotations

import itertools
import multiprocessing as mp
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")


def ordered_map(fn: Callable[..., T], calls: Iterable[tuple], workers: int,
                initializer: Callable[[], None] | None = None, ahead: int = 2) -> Iterator[T]:
    """``fn(*args)`` for each ``args`` of ``calls``, yielded in order, computed in ``workers``
    processes with at most ``ahead`` results per worker waiting (a result may be large: a chunk of a
    world). ``fn`` and ``initializer`` must be importable module-level functions."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    # spawn, not fork: the caller may hold threads (Arrow's pools, a Spark gateway) a fork would copy.
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=initializer) as pool:
        todo = iter(calls)
        pending = deque(pool.submit(fn, *args) for args in itertools.islice(todo, ahead * workers))
        while pending:
            result = pending.popleft().result()
            pending.extend(pool.submit(fn, *args) for args in itertools.islice(todo, 1))
            yield result
