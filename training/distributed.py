"""The processes of one training run, on Hugging Face Accelerate.

One process needs no launcher. Several are started by ``torchrun --nproc_per_node N -m cmaq.cli train ...``
(gloo on CPU, NCCL on GPUs) or ``accelerate launch --config_file configs/accelerate/<file>.yaml -m cmaq.cli
train ...``; every process runs the same code and this module says which part is its own:

- :func:`runtime` — this process's :class:`Runtime` (rank, world size, device), set up once per process
  with the ``[distributed]`` section (:func:`setup`; the ``cmaq train`` group calls it).
- :meth:`Runtime.shard` / :meth:`Runtime.gather` — work cut into one contiguous piece per rank (sampling,
  scoring, reference log-probabilities) and put back together in order on every rank.
- :meth:`Runtime.write` — outputs (adapters, metrics, pairs, progress) are written by the main process
  alone, under a temporary name renamed into place, so no file is written twice or left half-written
  when a rank dies; the others wait for it.
- :meth:`Runtime.collective` — every collective is guarded: the process group's timeout is at most 60 s,
  and a rank whose partner died or hung fails with an error naming the ranks that did not arrive
  (each rank records how far it got in the launcher's store).

The training loop itself (:mod:`training.loop`) builds one ``Accelerator`` per run from
:meth:`Runtime.accelerator`.
"""
from __future__ import annotations

import atexit
import contextlib
import datetime
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist
from accelerate import Accelerator, PartialState
from accelerate.state import AcceleratorState
from accelerate.utils import (DataLoaderConfiguration, DistributedDataParallelKwargs, DistributedType,
                              FullyShardedDataParallelPlugin, InitProcessGroupKwargs)

from cmaq.config import DistributedConfig

log = logging.getLogger(__name__)
#: Test hook: ``rank_exits:<rank>:<step>`` ends that rank's process at that training step (a dead GPU);
#: ``rank_hangs:<rank>:<step>`` makes it sleep there (a hung one).
FAULT_ENV = "CMAQ_FAULT_INJECTION"
_PROGRESS_KEY = "cmaq/progress/{rank}"


class RankFailure(RuntimeError):
    """A collective failed: another rank died or did not arrive within the process group's timeout."""


class Runtime:
    """This process's place in the run and the collectives the trainers use."""

    def __init__(self, cfg: DistributedConfig):
        self.cfg = cfg
        # The process group's timeout bounds every collective: a dead or hung rank fails the run in
        # timeout_s instead of the 30 min default.
        # Without a GPU the ranks run on the CPU over gloo (Accelerate's MULTI_CPU, which it picks only when told
        # it is on the CPU).
        self.cpu = not torch.cuda.is_available()
        self.state = PartialState(cpu=self.cpu, timeout=datetime.timedelta(seconds=cfg.timeout_s))
        self.rank, self.world = self.state.process_index, self.state.num_processes
        self.is_main = self.state.is_main_process
        self.device = self.state.device
        self._collectives = 0
        if self.world > 1:
            log.info("rank %d of %d (%s, %s)", self.rank, self.world, self.state.distributed_type, self.device)
            atexit.register(self.close)

    def close(self) -> None:
        """Leave the process group (at exit: torch warns about a group left open)."""
        if dist.is_initialized():
            with contextlib.suppress(Exception):
                dist.destroy_process_group()

    # ------------------------------------------------------------------ the Accelerator of one training run

    @property
    def fsdp(self) -> bool:
        return self.world > 1 and (self.cfg.strategy == "fsdp"
                                   or os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true")

    def accelerator(self) -> Accelerator:
        """A new Accelerator for one training run (they share this process's state). The global batch is
        split across processes (``split_batches``), so the scheduler steps once per optimizer step
        whatever the number of processes."""
        precision = self.cfg.mixed_precision
        if precision == "auto":
            # the launcher's Accelerate config, else bf16 autocast on a GPU (the loss functions upcast
            # their log-softmaxes) and plain fp32 on the CPU, where bf16 matmuls are slow
            precision = os.environ.get("ACCELERATE_MIXED_PRECISION") or ("bf16" if self.device.type == "cuda" else "no")
        plugin = None
        if self.fsdp:
            plugin = FullyShardedDataParallelPlugin(
                fsdp_version=self.cfg.fsdp_version, auto_wrap_policy="transformer_based_wrap",
                # one FSDP unit per decoder layer: its parameters are gathered only while it runs
                transformer_cls_names_to_wrap=["Qwen2DecoderLayer"], state_dict_type="SHARDED_STATE_DICT",
                use_orig_params=True, cpu_ram_efficient_loading=False)
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
        fixed = AcceleratorState._shared_state.get("_mixed_precision")
        if fixed not in (None, precision):
            # Another Accelerator in this process (a TRL trainer, say) fixed the shared state's precision.
            if self.world > 1:
                raise ValueError(f"Accelerate's state in this process is already set to mixed precision {fixed!r}, "
                                 f"not {precision!r}; set distributed.mixed_precision = {fixed!r}")
            AcceleratorState._reset_state()  # one process: nothing distributed hangs on it; start afresh
        accelerator = Accelerator(
            cpu=self.cpu, mixed_precision=precision, gradient_accumulation_steps=self.cfg.gradient_accumulation_steps,
            dataloader_config=DataLoaderConfiguration(split_batches=True), fsdp_plugin=plugin,
            kwargs_handlers=[InitProcessGroupKwargs(timeout=datetime.timedelta(seconds=self.cfg.timeout_s)),
                             DistributedDataParallelKwargs(find_unused_parameters=False)])
        if plugin is not None and accelerator.state.distributed_type == DistributedType.MULTI_CPU:
            # Accelerate turns a given FSDP plugin on for GPU-like devices only; PyTorch's FSDP2 also shards
            # over gloo on CPUs, which is how two CPU processes stand in for two GPUs here.
            # (set in both shared states: Accelerate copies the process state into each new AcceleratorState)
            self.state.distributed_type = accelerator.state.distributed_type = DistributedType.FSDP
            accelerator.state.fsdp_plugin = plugin
        return accelerator

    # ------------------------------------------------------------------ sharded work

    def shard(self, n: int) -> range:
        """This rank's contiguous share of ``n`` things (the first ranks take one more when n is uneven)."""
        return range(self.rank * n // self.world, (self.rank + 1) * n // self.world)

    def gather(self, local: Sequence) -> list:
        """Every rank's ``local`` list (its :meth:`shard`'s results), concatenated in rank order, on every rank."""
        if self.world == 1:
            return list(local)
        parts: list = [None] * self.world
        with self.collective("gather"):
            dist.all_gather_object(parts, list(local))
        return [x for part in parts for x in part]

    def map_sharded(self, items: Sequence, fn: Callable[[Sequence], Sequence]) -> list:
        """``fn`` over this rank's share of ``items`` (one result per item, in order), then gathered: the
        same list on every rank as ``fn(items)`` in one process."""
        mine = self.shard(len(items))
        out = list(fn(items[mine.start:mine.stop])) if len(mine) else []
        if len(out) != len(mine):
            raise AssertionError(f"{len(out)} results for {len(mine)} items")
        return self.gather(out)

    def from_main(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` run on the main process alone (work whose result every rank needs once, like the probe
        figures), its result sent to the others."""
        value = fn() if self.is_main else None
        if self.world == 1:
            return value
        box = [value]
        with self.collective("broadcast"):
            dist.broadcast_object_list(box, src=0)
        return box[0]

    def from_main_value(self, value: Any) -> Any:
        """The main process's ``value`` on every rank (each computed its own)."""
        return self.from_main(lambda: value)

    def barrier(self, what: str = "barrier") -> None:
        if self.world > 1:
            with self.collective(what):
                dist.barrier()

    def reduce_sum(self, value: torch.Tensor) -> torch.Tensor:
        """The sum of ``value`` over the ranks (a metric: every rank's share of a step's loss)."""
        if self.world == 1:
            return value
        value = value.detach().clone()
        with self.collective("all_reduce"):
            dist.all_reduce(value)
        return value

    # ------------------------------------------------------------------ outputs: the main process writes

    def write(self, path: str | Path, writer: Callable[[Path], None]) -> Path:
        """``writer(tmp)`` on the main process, then ``tmp`` renamed to ``path`` (a file or a directory,
        replacing what was there); every rank returns once it is in place."""
        path = Path(path)
        if self.is_main:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
            _remove(tmp)
            writer(tmp)
            if path.is_dir() and tmp.is_dir():
                old = path.with_name(f".{path.name}.old-{os.getpid()}")
                path.rename(old)
                tmp.rename(path)
                shutil.rmtree(old)
            else:
                os.replace(tmp, path)
        self.barrier(f"write {path.name}")
        return path

    def write_into(self, directory: str | Path, writer: Callable[[Path], None]) -> Path:
        """``writer(tmp)`` on the main process into a scratch directory, whose files are then renamed one by
        one into ``directory`` (which keeps what else it holds: a run's metrics, its checkpoint)."""
        directory = Path(directory)
        if self.is_main:
            directory.mkdir(parents=True, exist_ok=True)
            tmp = directory / f".write.tmp-{os.getpid()}"
            _remove(tmp)
            tmp.mkdir()
            writer(tmp)
            for f in sorted(tmp.iterdir()):
                if (directory / f.name).is_dir():
                    _remove(directory / f.name)
                os.replace(f, directory / f.name)
            tmp.rmdir()
        self.barrier(f"write into {directory.name}")
        return directory

    def write_text(self, path: str | Path, text: str) -> Path:
        return self.write(path, lambda tmp: tmp.write_text(text))

    def remove(self, path: str | Path) -> None:
        """``path`` (a file or a directory) removed by the main process."""
        if self.is_main:
            _remove(Path(path))
        self.barrier("remove")

    # ------------------------------------------------------------------ dead and hung ranks

    @contextlib.contextmanager
    def collective(self, what: str):
        """Guard one collective: record that this rank reached it, and turn a failure (a partner died, or
        did not come within the timeout) into a :class:`RankFailure` naming the ranks behind."""
        if self.world == 1:
            yield
            return
        self._collectives += 1
        n = self._collectives
        self._mark(n)
        try:
            yield
        except RankFailure:
            raise
        except RuntimeError as exc:  # gloo / NCCL report a dead peer or a timeout as RuntimeError subclasses
            if not _collective_error(exc):
                raise  # this rank's own failure (out of memory, a bad shape): not another rank's
            behind = self.ranks_behind(n)
            who = (f"rank(s) {', '.join(map(str, behind))} did not arrive" if behind
                   else "another rank failed")
            raise RankFailure(f"rank {self.rank}: {what} (collective #{n}) failed: {who} (process-group "
                              f"timeout {self.cfg.timeout_s} s): {str(exc).splitlines()[0][:200]}") from exc

    def step_reached(self, step: int) -> None:
        """Called by the training loop at each step: the fault hook (tests), nothing else."""
        fault = os.environ.get(FAULT_ENV, "")
        kind, _, where = fault.partition(":")
        if kind in ("rank_exits", "rank_hangs") and where:
            rank, _, at = where.partition(":")
            if int(rank) == self.rank and int(at) == step:
                log.error("fault injection: rank %d %s at step %d", self.rank, kind.split("_")[1], step)
                if kind == "rank_exits":
                    os._exit(17)
                time.sleep(3600)

    def _store(self):
        try:
            return dist.distributed_c10d._get_default_store()
        except Exception:  # noqa: BLE001 - no store: the failure message goes without the names
            return None

    def _mark(self, n: int) -> None:
        store = self._store()
        if store is not None:
            with contextlib.suppress(Exception):
                store.set(_PROGRESS_KEY.format(rank=self.rank), str(n))

    def ranks_behind(self, n: int) -> list[int]:
        """The ranks that have not reached this rank's collective number ``n``."""
        store = self._store()
        if store is None:
            return []
        behind = []
        for r in range(self.world):
            key = _PROGRESS_KEY.format(rank=r)
            try:
                reached = int(store.get(key)) if store.check([key]) else 0
            except Exception:  # noqa: BLE001 - the store went with the launcher
                return []
            if reached < n:
                behind.append(r)
        return behind


def _collective_error(exc: BaseException) -> bool:
    """Whether an error came out of the communication layer (a peer gone, a timeout)."""
    if isinstance(exc, getattr(dist, "DistError", ())):
        return True
    text = str(exc)
    return any(mark in text for mark in ("gloo", "NCCL", "Connection reset", "Connection closed", "Timed out",
                                          "timed out", "Broken pipe", "ProcessGroup"))


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


_RUNTIME: Runtime | None = None


def setup(cfg: DistributedConfig | None = None) -> Runtime:
    """This process's runtime, built once (the first call's settings hold for the process)."""
    global _RUNTIME
    if _RUNTIME is None:
        _RUNTIME = Runtime(cfg or DistributedConfig())
    elif cfg is not None and cfg != _RUNTIME.cfg:
        log.warning("[distributed] settings changed after the process group started; keeping the first ones")
    return _RUNTIME


def runtime() -> Runtime:
    """This process's runtime (default settings when :func:`setup` was not called)."""
    return setup()
