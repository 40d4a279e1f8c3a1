"""``[reproduce]``: the whole chain on a world and its report (``cmaq reproduce``)."""
from __future__ import annotations

from dataclasses import dataclass

from cmaq.config.loader import field_help, require


@dataclass
class ReproduceConfig:
    """`cmaq reproduce` / `make reproduce`: the whole chain on a world and the evaluation report."""

    out: str = field_help("Working directory of every step (world, data, RMs, adapters, evaluation rows).",
                          default="runs/reproduce")
    report: str = field_help("Where reproduction.md, its tables (CSV/JSON) and figures (PNG) go.", default="reports")
    registry: str = field_help(
        "Folder of the run registry (fixed.json: the settings the first evaluation froze; runs.jsonl: every "
        "evaluated run). Empty: <report>/reproduction. make reproduce-full shares make reproduce's.", default="")
    protocol: str = field_help(
        "'headline' (`make reproduce`): QSA, DPO, MORL and CMAQ at `headline_alpha` for every seed of `seeds`. "
        "'full' (`make reproduce-full`): the headline, then on the first `full_seeds` seeds DPO-LW, DPO-Soup, "
        "the α grids, the ablations and Figure 7's k × γ grid.", default="headline")
    seeds: list[int] = field_help(
        "Training seeds (align.seed: sampling, pair choice, data order). The world, its data, the reward models "
        "and QSA are built once and shared by every seed.", default_factory=lambda: [0, 1, 2])
    full_seeds: int = field_help("'full' protocol: the additions run on this many of `seeds` (the first ones).",
                                 default=1)
    headline_alpha: float = field_help("α of the headline protocol's CMAQ and MORL.", default=0.4)
    rm_factory: str = field_help(
        "The reward models' base: '' the policy's (model.factory), or 'tiny' / 'task'. The RMs need not share "
        "the policy's backbone; a smaller one costs less per ensemble member.", default="")
    alphas: list[float] = field_help("'full': α grid of CMAQ (each point is a full T-iteration run).",
                                     default_factory=lambda: [0.2, 0.4, 0.6, 0.8])
    baseline_alphas: list[float] = field_help(
        "α grid of DPO-LW and MORL (the baselines that train once per α). DPO-Soup trains its two adapters "
        "once and is merged at every point of `alphas`.", default_factory=lambda: [0.2, 0.4, 0.6, 0.8])
    ablation_alphas: list[float] = field_help("α points of the ablations (the paper's table: 0.4 and 0.6).",
                                              default_factory=lambda: [0.4, 0.6])
    figure7_k: list[int] = field_help("'full': Figure 7's samples per content k (CMAQ at each k × γ × α).",
                                      default_factory=lambda: [2, 4, 6, 8])
    figure7_gamma: list[float] = field_help("'full': Figure 7's γ values.", default_factory=lambda: [0.2, 0.5, 1.0])
    figure7_alphas: list[float] = field_help("'full': Figure 7's α values.", default_factory=lambda: [0.4, 0.6])
    test_contents: int = field_help("Held-out contents every policy is evaluated on.", default=500)
    bootstrap: int = field_help("Bootstrap rounds for the A/B intervals.", default=2000)
    backbone_layers: int = field_help("0: every model's base is the project's tiny model. Otherwise a random-"
                                      "initialised Qwen2 of this many layers (the GPU profile).", default=0)
    backbone_hidden: int = field_help("Hidden size of that random-initialised backbone.", default=512)

    def __post_init__(self) -> None:
        require(self.protocol in ("headline", "full"), "protocol", "must be 'headline' or 'full'")
        require(len(self.seeds) >= 1 and len(set(self.seeds)) == len(self.seeds) and min(self.seeds) >= 0, "seeds",
                "needs at least one seed, all distinct and >= 0")
        require(1 <= self.full_seeds <= len(self.seeds), "full_seeds", "must be in [1, len(seeds)]")
        require(0.0 <= self.headline_alpha <= 1.0, "headline_alpha", "must be in [0, 1]")
        require(self.rm_factory in ("", "tiny", "task"), "rm_factory", "must be '', 'tiny' or 'task'")
        require(all(k >= 2 for k in self.figure7_k), "figure7_k", "every k must be >= 2")
        require(all(g >= 0 for g in self.figure7_gamma), "figure7_gamma", "every γ must be >= 0")
        require(self.backbone_layers >= 0, "backbone_layers", "must be >= 0")
        require(self.backbone_hidden % 64 == 0 and self.backbone_hidden >= 64, "backbone_hidden",
                 "must be a positive multiple of 64 (attention heads of 64)")
        for key in ("alphas", "baseline_alphas", "ablation_alphas", "figure7_alphas"):
            values = getattr(self, key)
            require(all(0.0 <= a <= 1.0 for a in values), key, "every α must be in [0, 1]")
            require(len(set(values)) == len(values), key, "α values must be distinct")
        require(len(self.alphas) >= 1, "alphas", "needs at least one α")
        require(self.test_contents >= 1, "test_contents", "must be >= 1")
        require(self.bootstrap >= 100, "bootstrap", "must be >= 100")
