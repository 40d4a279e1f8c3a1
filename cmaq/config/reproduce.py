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
    alphas: list[float] = field_help("α grid of CMAQ (each point is a full T-iteration run).",
                                     default_factory=lambda: [0.2, 0.4, 0.6, 0.8])
    baseline_alphas: list[float] = field_help(
        "α grid of DPO-LW and MORL (the baselines that train once per α). DPO-Soup trains its two adapters "
        "once and is merged at every point of `alphas`.", default_factory=lambda: [0.2, 0.4, 0.6, 0.8])
    ablation_alphas: list[float] = field_help("α points of the ablations (the paper's table: 0.4 and 0.6).",
                                              default_factory=lambda: [0.4, 0.6])
    test_contents: int = field_help("Held-out contents every policy is evaluated on.", default=500)
    bootstrap: int = field_help("Bootstrap rounds for the A/B intervals.", default=2000)
    backbone_layers: int = field_help("0: every model's base is the project's tiny model. Otherwise a random-"
                                      "initialised Qwen2 of this many layers (the GPU profile).", default=0)
    backbone_hidden: int = field_help("Hidden size of that random-initialised backbone.", default=512)

    def __post_init__(self) -> None:
        require(self.backbone_layers >= 0, "backbone_layers", "must be >= 0")
        require(self.backbone_hidden % 64 == 0 and self.backbone_hidden >= 64, "backbone_hidden",
                 "must be a positive multiple of 64 (attention heads of 64)")
        for key in ("alphas", "baseline_alphas", "ablation_alphas"):
            values = getattr(self, key)
            require(all(0.0 <= a <= 1.0 for a in values), key, "every α must be in [0, 1]")
            require(len(set(values)) == len(values), key, "α values must be distinct")
        require(len(self.alphas) >= 1, "alphas", "needs at least one α")
        require(self.test_contents >= 1, "test_contents", "must be >= 1")
        require(self.bootstrap >= 100, "bootstrap", "must be >= 100")
