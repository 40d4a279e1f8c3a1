"""Training on several processes: `torchrun --nproc_per_node 2` on the CPU (gloo) stands in for two GPUs.

One process and two train the same adapter (QSA, then one CMAQ iteration from the same QSA); a
two-process run killed after a checkpoint resumes to the uninterrupted result; a hung rank fails the
run within the process group's timeout, named; FSDP trains and saves a loadable adapter. The
one-process runs are in this process; the two-process runs are real `torchrun` launches of `cmaq train`.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from cmaq.config import AlignConfig, PolicyTrainConfig

# Adam divides each gradient by its running scale, so float summation-order noise (~1e-7 relative: one
# batch of 8 vs two of 4) moves a weight whose gradient is near zero by up to lr per step. At lr 1e-3
# over 20 steps that stays below 1e-4 (at 2e-3 it reaches 1.8e-4, with or without a second process).
QSA = dict(lr=1e-3, batch_size=8, warmup_steps=2)
MAX_STEPS = 20


def _qsa_settings(sft: Path) -> dict:
    steps_per_epoch = math.ceil(pq.read_table(sft).num_rows / QSA["batch_size"])
    return {**QSA, "epochs": MAX_STEPS / steps_per_epoch}


def _torchrun(args: list[str], tmp: Path, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "cmaq.cli", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=tmp)


def _sets(section: str, settings: dict) -> list[str]:
    return [a for k, v in settings.items() for a in ("--set", f"{section}.{k}={v!r}" if isinstance(v, str)
                                                      else f"{section}.{k}={v}")]


def _max_difference(a: Path, b: Path) -> float:
    x, y = load_file(str(a / "adapter_model.safetensors")), load_file(str(b / "adapter_model.safetensors"))
    assert set(x) == set(y) and x
    return max(float((x[k] - y[k]).abs().max()) for k in x)


def _ok(run: subprocess.CompletedProcess) -> None:
    assert run.returncode == 0, run.stderr[-3000:]


@pytest.fixture(scope="module")
def qsa_runs(rm_data, tmp_path_factory):
    """QSA on one process (here) and on two (torchrun), the same settings and global batch."""
    from training.sft import train_qsa

    tmp = tmp_path_factory.mktemp("distributed")
    settings = _qsa_settings(rm_data / "sft")
    one = train_qsa(PolicyTrainConfig(out=str(tmp / "one"), **settings), str(rm_data / "sft"))
    two = _torchrun([*_sets("sft", settings), "train", "sft", "--data", str(rm_data / "sft"), "--out",
                     str(tmp / "two")], tmp)
    _ok(two)
    return tmp, settings, one


def test_two_processes_train_the_adapter_one_does(qsa_runs, trained_rms, rm_data):
    from training.align import run_align

    tmp, _, one = qsa_runs
    two = json.loads((tmp / "two" / "metrics.json").read_text())
    assert one["steps"] == two["steps"] == MAX_STEPS and two["processes"] == 2 and one["processes"] == 1
    assert (one["distributed"], two["distributed"]) == ("NO", "MULTI_CPU")
    assert two["loss_curve"] == pytest.approx(one["loss_curve"], abs=1e-4)  # reduced across the ranks
    assert _max_difference(tmp / "one" / "adapter", tmp / "two" / "adapter") <= 1e-4

    # One CMAQ iteration from the same QSA: sampling, scoring, the gate and the reference log-probs
    # are sharded over the ranks and gathered, so both mine the same pairs and train the same adapter.
    rms = trained_rms[0]
    settings = dict(qsa=str(tmp / "one" / "adapter"), rm_exp=str(rms / "exp"), rm_ctr=str(rms / "ctr"), contents=240,
                    k=4, iterations=1, lr=1e-3, batch_size=2, warmup_steps=1, temperature=1.0, seed=3,
                    probe_contents=4, probe_k=2)
    cmaq_one = run_align(AlignConfig(out=str(tmp / "cmaq-one"), **settings), str(rm_data / "sft"))
    _ok(_torchrun([*_sets("align", settings), "train", "align", "--data", str(rm_data / "sft"), "--out",
                   str(tmp / "cmaq-two")], tmp))
    steps = json.loads((tmp / "cmaq-two" / "iter-1" / "metrics.json").read_text())["steps"]
    assert 3 <= steps <= MAX_STEPS, steps
    pairs = [pq.read_table(tmp / d / "iter-1" / "pairs.parquet").to_pandas() for d in ("cmaq-one", "cmaq-two")]
    assert cmaq_one["iterations"][0]["pairs"] == len(pairs[1])
    key = ["content_id", "chosen", "rejected"]
    assert pairs[0][key].equals(pairs[1][key])
    assert (pairs[0]["ref_chosen"] - pairs[1]["ref_chosen"]).abs().max() < 1e-4
    assert _max_difference(tmp / "cmaq-one" / "adapter", tmp / "cmaq-two" / "adapter") <= 1e-4
    # the collapse probe ran on both ranks alike and was written once
    two_metrics = json.loads((tmp / "cmaq-two" / "metrics.json").read_text())
    assert two_metrics["probe_qsa"]["proxy"] == pytest.approx(cmaq_one["probe_qsa"]["proxy"], abs=1e-6)


def _written_outputs(out: Path) -> list[str]:
    """What a run left in ``out`` besides its checkpoint (and any temporary name)."""
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if "checkpoint" not in p.parts)


def test_a_two_process_run_killed_after_a_checkpoint_resumes_to_the_same_adapter(qsa_runs, rm_data):
    tmp, settings, _ = qsa_runs
    out = tmp / "killed"
    args = [*_sets("sft", {**settings, "checkpoint_every": 5}), "train", "sft", "--data", str(rm_data / "sft"),
            "--out", str(out)]
    dead = _torchrun(args, tmp, env={"CMAQ_FAULT_INJECTION": "rank_exits:1:8"})
    assert dead.returncode != 0
    # the launcher's summary (or the survivor's own error) names the rank that died
    assert "rank      : 1 (local_rank: 1)" in dead.stderr or "rank(s) 1 did not arrive" in dead.stderr, dead.stderr[-2000:]
    # nothing but the complete checkpoint of step 5: no adapter, metrics or half-written file
    assert _written_outputs(out) == []
    assert [p.name for p in (out / "checkpoint").iterdir()] == ["step-5"]
    resumed = _torchrun(args, tmp)
    _ok(resumed)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["resumed_at"] == 5 and metrics["steps"] == MAX_STEPS
    uninterrupted = json.loads((tmp / "two" / "metrics.json").read_text())
    assert metrics["loss_curve"] == uninterrupted["loss_curve"]
    assert _max_difference(out / "adapter", tmp / "two" / "adapter") <= 1e-6
    assert not (out / "checkpoint").exists() and not [p for p in out.rglob(".*tmp*")]


def test_a_hung_rank_fails_the_run_within_the_timeout_naming_it(qsa_runs, rm_data):
    tmp, settings, _ = qsa_runs
    out = tmp / "hung"
    started = time.monotonic()
    run = _torchrun([*_sets("sft", settings), "--set", "distributed.timeout_s=5", "train", "sft", "--data",
                     str(rm_data / "sft"), "--out", str(out)], tmp, env={"CMAQ_FAULT_INJECTION": "rank_hangs:1:3"})
    assert run.returncode != 0
    assert "rank(s) 1 did not arrive (process-group timeout 5 s)" in run.stderr, run.stderr[-2000:]
    assert time.monotonic() - started < 120
    assert _written_outputs(out) == []


def test_fsdp_on_two_processes_saves_a_loadable_adapter(qsa_runs, rm_data, tiny_model):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    tmp, _, _ = qsa_runs
    out = tmp / "fsdp"
    _ok(_torchrun([*_sets("sft", {**QSA, "epochs": 0.03}), "--set", "distributed.strategy='fsdp'", "train", "sft",
                   "--data", str(rm_data / "sft"), "--out", str(out)], tmp))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["processes"] == 2 and metrics["distributed"] == "FSDP" and metrics["steps"] >= 3
    weights = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    # the full adapter, gathered from the shards: every LoRA factor whole, the B factors trained off zero
    assert all(w.shape[0] > 1 for k, w in weights.items() if "lora_A" in k)
    assert all(float(w.abs().max()) > 0 for k, w in weights.items() if "lora_B" in k)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), str(out / "adapter"))
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([[1, 2, 3]])).logits
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name, kind, processes", [("1gpu", "NO", 1), ("ddp-8gpu", "MULTI_GPU", 8),
                                                   ("fsdp-8gpu", "FSDP", 8), ("deepspeed-zero2-8gpu", "DEEPSPEED", 8)])
def test_the_example_accelerate_configs_load(name, kind, processes):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(Path(__file__).resolve().parents[1] / "configs" / "accelerate" / f"{name}.yaml"))
    assert (config.distributed_type.value, config.num_processes, config.mixed_precision) == (kind, processes, "bf16")


def test_the_vllm_sampler_takes_its_memory_share_and_follows_the_adapter_rank(tiny_model):
    from cmaq.config import load_config
    from training.preference import sampler_engine

    cfg = load_config(None, ["align.sampler='vllm'", "align.sampler_memory_share=0.3"])
    engine = sampler_engine(cfg.align, cfg.engine, tiny_model)  # built lazily: no vLLM process starts here
    assert type(engine).__name__ == "VllmEngine"
    assert engine.cfg.gpu_memory_utilization == 0.3 and engine.cfg.max_lora_rank == 0
    assert engine.cfg.distributed_executor_backend == ""  # one process: vLLM's own executor
    plain = sampler_engine(load_config(None, ["align.sampler='vllm'"]).align, cfg.engine, tiny_model)
    assert plain.cfg.gpu_memory_utilization == cfg.engine.gpu_memory_utilization
