"""`cmaq reproduce`: the training chain in order, on a world, and its evaluation report.

    world ─► data (Spark: D_SFT, CTR pairs, expansion labels) ─► [backbone] ─► reward models (r_exp, r_ctr)
        ─► QSA ─► RM checks (swapped notes, note-blindness on QSA's samples) ─► CMAQ over the α grid ─► baselines (DPO, DPO-LW, MORL, DPO-Soup) ─► ablations
        ─► evaluation ─► ``reports/reproduction.md``

This is the one place the chain's order is written down (:meth:`Reproduction.steps`); each step calls
the library function a user would call through ``cmaq data`` / ``cmaq train`` / ``cmaq eval``.

Every step writes into ``reproduce.out`` and is skipped when its output is complete, so a killed run
resumes. Sizes come from a profile (a list of ``section.key=value`` settings, overridable with
``--set``):

- ``cpu`` (``make reproduce``): the tiny model on 2 cores within 90 minutes, 500 test contents,
  N = 1,000 contents per iteration, k = 8, T = 3, the full α grid for CMAQ, DPO-LW, DPO-Soup and MORL,
  the ablations at α = 0.4 and 0.6;
- ``gpu`` (``make reproduce-gpu``): more items and contents and a larger random-initialised backbone;
- ``smoke``: a few dozen contents, for the tests.

Where one run's result is, by construction, another's, it is reused rather than recomputed: every run's
first iteration samples the same queries from QSA (same seed, contents, k and temperature) and scores
them with the same reward models, so they are drawn once (``qsa-samples.parquet``) and shared by each α,
the ablations and the baselines' preference set; the w/o OT ablation's whole first iteration *is*
CMAQ's at the same α, so it is copied.
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd

from cmaq.config import CmaqConfig, load_config, to_dict
from cmaq.engines import base_model_dir, make_engine
from cmaq.engines.tiny import build_random_backbone
from cmaq.world.generate import generate_world
from cmaq.world.oracle import oracle_code_hash
from training.align import run_align
from training.baselines import merge_lora_soup, run_baseline
from training.evaluate.offline import Evaluator, Policy, ab_provenance, load_test_items
from training.evaluate.report import write_evaluation
from training.evaluate.rm_checks import check_reward_models
from training.reward_models.train import train_ctr, train_expansion
from training.sft import train_qsa

log = logging.getLogger(__name__)

_TINY_TRAINING = ["sft.lr=1e-3", "align.lr=1e-3", "align.batch_size=8", "align.warmup_steps=5",
                  # The method's 1.5 suits a 7B model; the tiny model's samples at 1.5 are mostly byte soup.
                  "align.temperature=1.0", "sft.epochs=0.3", "sft.batch_size=16"]
PROFILES: dict[str, list[str]] = {
    # The engines' prompt budget is the training one (448 tokens), so beams see the prompts the policy
    # was trained on.
    # Each RM trains on all its training rows for as long as its validation loss keeps falling (at most
    # 10 epochs; the weights of the lowest validation loss are kept).
    # The CPU profile starts from the task model (4 x 192, committed weights): the tiny one cannot copy
    # from its prompt, so QSA could not write the note's own kind of query (issue 17).
    "cpu": ["model.factory=task", "world.items=4000", "world.seed=11", "rm_exp.epochs=10", "rm_ctr.epochs=10",
            "rm_exp.patience=1", "rm_ctr.patience=1", "engine.max_model_len=481", "align.contents=1000",
            "align.k=8", "align.iterations=3",
            "reproduce.test_contents=500", *_TINY_TRAINING,
            # QSA on the task model: two epochs at scale alpha / r = 2 (the method's 8 / 32 and 0.3 of an
            # epoch left its top beam on popular strings; one epoch: 15.8% own-kind, two: 21.2%)
            "sft.lr=2e-3", "sft.lora_alpha=64", "sft.epochs=2"],
    # One H100 within 10 minutes: a 12-layer random-initialised backbone instead of the pretrained
    # tiny model, twice the world; the per-iteration sizes stay those of the CPU profile. Measured once
    # in fp32 (before bf16 autocast and shared prefixes): RMs 126 s + 305 s on 40,863 CTR pairs, then
    # QSA ran out of the 10 minutes; hence one α for the costliest baselines. (The CTR pair cap went with
    # early stopping on the validation split; the GPU profile has not been re-measured since.)
    "gpu": ["world.items=8000", "world.seed=11", "reproduce.backbone_layers=12", "reproduce.backbone_hidden=512",
            "rm_exp.epochs=10", "rm_ctr.epochs=10", "rm_exp.patience=1", "rm_ctr.patience=1",
            "rm_exp.batch_size=64", "rm_ctr.batch_size=64", "rm_exp.finetune=full", "rm_ctr.finetune=full",
            "align.contents=1000", "align.k=8", "align.iterations=3", "reproduce.test_contents=500",
            "reproduce.baseline_alphas=[0.4]", "reproduce.ablation_alphas=[0.4]",
            "sft.lr=3e-4", "sft.epochs=2", "sft.batch_size=64", "align.lr=1e-4", "align.batch_size=32",
            "align.warmup_steps=5", "align.temperature=1.0", "align.sampler_batch=64", "engine.hf_batch_size=64"],
    "smoke": ["world.items=400", "world.seed=5", "rm_exp.epochs=0.3", "rm_ctr.epochs=0.2", "rm_ctr.patience=1",
              "rm_ctr.max_train_examples=400", "rm_exp.max_train_examples=300", "align.contents=48", "align.k=6", "align.probe_contents=16",
              "align.iterations=2", "align.baseline_epochs=1", "reproduce.test_contents=16",
              "reproduce.alphas=[0.4, 0.6]", "reproduce.baseline_alphas=[0.4]", "reproduce.ablation_alphas=[0.4]",
              "reproduce.bootstrap=200", *_TINY_TRAINING],
}
ABLATION_SETTINGS = {"cmaq-wo-ot": {"reuse_first": True}, "cmaq-wo-cds": {"mean": "arithmetic"},
                     "cmaq-wo-ct": {"static_beta": True}}
MULTI_ALPHA_BASELINES = ("dpo-lw", "morl")


def with_backbone(cfg: CmaqConfig) -> CmaqConfig:
    """The run's configuration with its base resolved: with ``reproduce.backbone_layers > 0`` the
    random-initialised backbone under ``reproduce.out`` is ``model.base_dir`` and no section overrides
    it (every model of the chain shares the base); otherwise ``cfg`` as it is."""
    if not cfg.reproduce.backbone_layers:
        return cfg
    backbone = str(Path(cfg.reproduce.out) / "backbone")
    return replace(cfg, model=replace(cfg.model, base_dir=backbone),
                   **{s: replace(getattr(cfg, s), model_dir="") for s in ("sft", "align", "rm_exp", "rm_ctr")})


def profile_config(profile: str, config_file: str | None = None, overrides: tuple[str, ...] = ()) -> CmaqConfig:
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}: use one of {', '.join(PROFILES)}")
    return load_config(config_file, [*PROFILES[profile], *overrides])


class Reproduction:
    """The chain's steps over one configuration; each is idempotent."""

    def __init__(self, cfg: CmaqConfig, spark=None, progress=print):
        self.cfg, self.out = with_backbone(cfg), Path(cfg.reproduce.out)
        self._spark, self.progress = spark, progress
        self.timings: dict[str, float] = {}

    # ------------------------------------------------------------------ paths
    @property
    def world(self) -> Path:
        return self.out / "world"

    @property
    def data(self) -> Path:
        return self.out / "data"

    def _align_cfg(self, out: Path, alpha: float, **changes):
        c = self.cfg.align
        return replace(c, out=str(out), alpha=alpha, qsa=str(self.out / "qsa" / "adapter"),
                       rm_exp=str(self.out / "rm-exp"), rm_ctr=str(self.out / "rm-ctr"),
                       first_samples=str(self.out / "qsa-samples.parquet"), **changes)

    def _align(self, align_cfg) -> dict:
        return run_align(align_cfg, str(self.data / "sft"), model_cfg=self.cfg.model, engine_cfg=self.cfg.engine,
                         filters_cfg=self.cfg.filters)

    def _baseline(self, align_cfg, method: str, ctr_pairs: str | None = None) -> dict:
        return run_baseline(align_cfg, method, str(self.data / "sft"), ctr_pairs, model_cfg=self.cfg.model,
                            engine_cfg=self.cfg.engine, filters_cfg=self.cfg.filters)

    def _timed(self, name: str, fn, done: Path):
        if done.exists():
            self.progress(f"[reproduce] {name}: done earlier, skipped")
            return
        self.progress(f"[reproduce] {name} ...")
        t0 = time.perf_counter()
        fn()
        self.timings[name] = round(time.perf_counter() - t0, 1)
        self._save_timings()
        self.progress(f"[reproduce] {name}: {self.timings[name]:.0f} s")

    def _save_timings(self) -> None:
        """Step durations survive a resume: ``timings.json`` gathers those of every run into ``out``."""
        path = self.out / "timings.json"
        saved = json.loads(path.read_text()) if path.exists() else {}
        path.write_text(json.dumps({**saved, **self.timings}, indent=1))

    # ------------------------------------------------------------------ steps
    def make_world(self) -> None:
        self._timed("world", lambda: generate_world(self.cfg.world, self.world), self.world / "world.json")

    def make_data(self) -> None:
        if all((self.data / f"summary_{k}.json").exists() for k in ("sft", "ctr-pairs", "expansion")):
            self.progress("[reproduce] data: done earlier, skipped")
            return
        # pyspark is optional here: the GPU machine has none and gets its data built elsewhere (make
        # reproduce-gpu-data), so the Spark builders are imported only when the data must be built.
        from jobs.data.builders import run

        for kind, marker in (("sft", "summary_sft.json"), ("ctr-pairs", "summary_ctr-pairs.json"),
                             ("expansion", "summary_expansion.json")):
            self._timed(f"data {kind}", lambda k=kind: run(k, self.cfg, str(self.world), str(self.data), self.spark),
                        self.data / marker)

    @property
    def spark(self):
        if self._spark is None:
            from jobs.spark import get_spark  # pyspark: optional, see make_data

            self._spark = get_spark("cmaq-reproduce")
        return self._spark

    def train_reward_models(self) -> None:
        for name, fn, section, data in (("rm-exp", train_expansion, self.cfg.rm_exp, "expansion"),
                                        ("rm-ctr", train_ctr, self.cfg.rm_ctr, "ctr_pairs")):
            out = self.out / name
            self._timed(name, lambda: fn(replace(section, out=str(out)), str(self.data / data), str(self.world),
                                         model_cfg=self.cfg.model), out / "metrics.json")

    def train_qsa(self) -> None:
        out = self.out / "qsa"
        self._timed("qsa", lambda: train_qsa(replace(self.cfg.sft, out=str(out)), str(self.data / "sft"),
                                             model_cfg=self.cfg.model), out / "adapter" / "adapter_config.json")

    def check_reward_models(self) -> None:
        """Swapped-note accuracy and note-blindness on k = 8 samples of QSA for the held-out notes,
        into each RM's metrics.json and ``rm-checks.json`` (the report's reward-model section)."""
        out = self.out / "rm-checks.json"

        def run() -> None:
            items = load_test_items(str(self.world), str(self.data / "test_contents"), self.cfg.reproduce.test_contents)
            engine = make_engine(replace(self.cfg.engine, backend="hf",
                                         model_dir=base_model_dir(self.cfg.model, self.cfg.sft.model_dir)))
            result = check_reward_models(self.world, items, str(self.out / "rm-exp"), str(self.out / "rm-ctr"),
                                         engine, str(self.out / "qsa" / "adapter"), k=8,
                                         temperature=self.cfg.align.temperature, seed=self.cfg.align.seed,
                                         samples_out=self.out / "rm-checks-samples.parquet")
            out.write_text(json.dumps(result, indent=1, default=float))

        self._timed("rm checks", run, out)

    def run_cmaq(self) -> None:
        for alpha in self.cfg.reproduce.alphas:
            out = self.out / f"cmaq-a{alpha:g}"
            self._timed(f"cmaq α={alpha:g}", lambda: self._align(self._align_cfg(out, alpha)), out / "metrics.json")

    def run_ablations(self) -> None:
        for alpha in self.cfg.reproduce.ablation_alphas:
            for name, changes in ABLATION_SETTINGS.items():
                out = self.out / f"{name}-a{alpha:g}"
                if changes.get("reuse_first"):
                    self._share_first_iteration(alpha, out)
                self._timed(f"{name} α={alpha:g}",
                            lambda: self._align(self._align_cfg(out, alpha, **changes)),
                            out / "metrics.json")

    def _share_first_iteration(self, alpha: float, out: Path) -> None:
        """w/o OT only reuses its first iteration's pairs afterwards; that first iteration is exactly
        CMAQ's at the same α, so CMAQ's finished one is copied in."""
        src, dst = self.out / f"cmaq-a{alpha:g}" / "iter-1", out / "iter-1"
        if (src / "DONE").exists() and not dst.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(src, dst)

    def run_baselines(self) -> None:
        pairs = str(self.data / "ctr_pairs")
        root = self.out / "baselines"
        first = self.cfg.reproduce.alphas[0]
        self._timed("dpo", lambda: self._baseline(self._align_cfg(root, first), "dpo", pairs),
                    root / "dpo" / "summary.json")
        for alpha in self.cfg.reproduce.baseline_alphas:
            for method in MULTI_ALPHA_BASELINES:
                target = root / f"{method}-a{alpha:g}"
                self._timed(f"{method} α={alpha:g}", lambda m=method, a=alpha, t=target: self._baseline_at(m, a, t),
                            target / "summary.json")
        # The soup's two single-objective adapters do not depend on α; merging is exact and cheap.
        self._timed("dpo-soup", lambda: self._baseline(self._align_cfg(root, first), "dpo-soup"),
                    root / "dpo-soup" / "summary.json")
        for alpha in self.cfg.reproduce.alphas:
            target = root / f"dpo-soup-a{alpha:g}" / "adapter"
            if not (target / "adapter_config.json").exists():
                merge_lora_soup(root / "soup-exp" / "adapter", root / "soup-ctr" / "adapter", alpha, target)

    def _baseline_at(self, method: str, alpha: float, target: Path) -> None:
        """One α of DPO-LW or MORL, from the preference set every baseline shares (built once in
        ``baselines/preferences.parquet``)."""
        root = self.out / "baselines"
        result = self._baseline(self._align_cfg(root, alpha), method)
        shutil.rmtree(target, ignore_errors=True)
        shutil.move(str(root / method), str(target))
        result["adapter"] = str(target / "adapter")
        (target / "summary.json").write_text(json.dumps(result, indent=2, default=str))

    # ------------------------------------------------------------------ evaluation
    def policies(self) -> list:
        r = self.cfg.reproduce
        pol = [Policy("zero-shot", None), Policy("qsa", str(self.out / "qsa" / "adapter")),
               Policy("dpo", str(self.out / "baselines" / "dpo" / "adapter"))]
        for a in r.alphas:
            for t in range(1, self.cfg.align.iterations + 1):
                pol.append(Policy("cmaq", str(self.out / f"cmaq-a{a:g}" / f"iter-{t}" / "adapter"), a, t))
            pol.append(Policy("dpo-soup", str(self.out / "baselines" / f"dpo-soup-a{a:g}" / "adapter"), a))
        for a in r.baseline_alphas:
            pol += [Policy(m, str(self.out / "baselines" / f"{m}-a{a:g}" / "adapter"), a) for m in MULTI_ALPHA_BASELINES]
        for a in r.ablation_alphas:
            pol += [Policy(name, str(self.out / f"{name}-a{a:g}" / "adapter"), a) for name in ABLATION_SETTINGS]
        return pol

    def evaluate(self) -> dict:
        items = load_test_items(str(self.world), str(self.data / "test_contents"), self.cfg.reproduce.test_contents)
        evaluator = Evaluator(base_model_dir(self.cfg.model, self.cfg.sft.model_dir), str(self.out / "rm-exp"),
                              str(self.out / "rm-ctr"), items, str(self.out / "eval"), engine_cfg=self.cfg.engine,
                              filters_cfg=self.cfg.filters)
        t0 = time.perf_counter()
        frames = []
        for i, policy in enumerate(self.policies(), 1):
            self.progress(f"[reproduce] evaluating {policy.name} ({i}/{len(self.policies())})")
            frames.append(evaluator.rows(policy))
        self.timings["evaluation"] = round(time.perf_counter() - t0, 1)
        self._save_timings()
        return write_evaluation(pd.concat(frames, ignore_index=True), Path(self.cfg.reproduce.report),
                                {**self.provenance(len(items)), **ab_provenance(evaluator)},
                                self.cfg.reproduce.bootstrap, self.cfg.world.seed,
                                reward_models=self.reward_model_metrics(), world=self.world)

    def reward_model_metrics(self) -> dict:
        """Each RM's metrics.json (held-out accuracy, calibration, the note checks), for the report."""
        out = {}
        for name in ("rm-exp", "rm-ctr"):
            path = self.out / name / "metrics.json"
            if path.exists():
                metrics = json.loads(path.read_text())
                out[name] = {k: v for k, v in metrics.items() if k not in ("loss_curve", "validation_curve")}
        return out

    def provenance(self, test_contents: int) -> dict:
        world = json.loads((self.world / "world.json").read_text("utf-8"))
        a = self.cfg.align
        return {"world seed": world["config"]["seed"], "world items": world["config"]["items"],
                "oracle code hash": oracle_code_hash(), "test contents": test_contents,
                "contents per iteration (N)": a.contents, "k": a.k, "iterations (T)": a.iterations,
                "sampling temperature": a.temperature, "CMAQ α grid": self.cfg.reproduce.alphas,
                "DPO-LW / MORL α grid": self.cfg.reproduce.baseline_alphas,
                "ablation α": self.cfg.reproduce.ablation_alphas,
                "step seconds": json.loads((self.out / "timings.json").read_text())
                if (self.out / "timings.json").exists() else self.timings}

    def steps(self) -> dict:
        return {"world": self.make_world, "data": self.make_data, "backbone": self.make_backbone,
                "rms": self.train_reward_models, "qsa": self.train_qsa, "rm-checks": self.check_reward_models,
                "cmaq": self.run_cmaq,
                "baselines": self.run_baselines, "ablations": self.run_ablations, "eval": self.evaluate}

    def run(self, stop_after: str = "eval") -> dict:
        """Every step up to and including ``stop_after``; the evaluation's result when it ran."""
        if stop_after not in self.steps():
            raise ValueError(f"unknown step {stop_after!r}: use one of {', '.join(self.steps())}")
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "config.json").write_text(json.dumps(to_dict(self.cfg), indent=1))
        t0 = time.perf_counter()
        result: dict = {}
        for name, step in self.steps().items():
            result = step() or {}
            if name == stop_after:
                break
        result.update(stopped_after=stop_after, seconds=round(time.perf_counter() - t0, 1))
        return result

    def make_backbone(self) -> None:
        """With ``reproduce.backbone_layers > 0``, a larger random-initialised Qwen2 (the tiny model's
        tokenizer) is every model's base (see :func:`with_backbone`); built where it runs (it is too big
        to carry and cheap to make), deterministic from the world seed."""
        r = self.cfg.reproduce
        if r.backbone_layers == 0:
            return
        out = self.out / "backbone"
        self._timed("backbone", lambda: build_random_backbone(out, r.backbone_hidden, r.backbone_layers,
                                                              seed=self.cfg.world.seed), out / "DONE")
