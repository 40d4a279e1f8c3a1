"""``[rm_exp]``, ``[rm_ctr]``, ``[sft]`` and ``[align]``: the trainers in :mod:`training`."""
from __future__ import annotations

from dataclasses import dataclass

from cmaq.config.loader import field_help, require


@dataclass
class RewardModelConfig:
    """One reward model's training (training/reward_models; `cmaq train rm-exp` / `rm-ctr`).
    Defaults suit the tiny test backbone on a CPU; for a real 0.5B-7B base use lr 1e-4 and r 16-64."""

    model_dir: str = field_help("Overrides model.base_dir for this section alone (deprecated: set model.base_dir).",
                                default="")
    out: str = field_help("Output directory: adapter (+ head), tokenizer, cmaq_rm.json, metrics.json, checkpoint/. "
                          "Empty: runs/rm-exp or runs/rm-ctr.", default="")
    finetune: str = field_help(
        "'lora' (the method's setting: LoRA on every projection, plus the CTR head), 'full' (every weight), or "
        "'auto': full for the project's tiny model, which LoRA barely moves (see the README), LoRA otherwise.",
        default="auto")
    lora_r: int = field_help("LoRA rank on every attention and MLP projection.", default=32)
    lora_alpha: int = field_help("LoRA alpha (scale = alpha / r).", default=64)
    lora_dropout: float = field_help("LoRA dropout.", default=0.0)
    lr: float = field_help("Peak learning rate (AdamW, linear warm-up then cosine decay).", default=5e-4)
    warmup_steps: int = field_help("Warm-up steps (capped at a tenth of the run).", default=30)
    epochs: float = field_help("Passes over the training examples (fractions allowed); with patience, the most.",
                               default=3.0)
    patience: int = field_help(
        "Early stopping: stop after this many validations in a row without a lower validation loss (0: train "
        "every epoch). Either way the weights of the lowest validation loss are kept; needs a validation split.",
        default=0)
    validate_every: int = field_help("Steps between validation losses (0: once per epoch).", default=0)
    members: int = field_help(
        "Ensemble members: member i trains from seed + i on a bootstrap resample of the training rows "
        "(tokenised once for all); the scorer returns each objective's mean and standard deviation. K members "
        "cost K times the training and scoring.", default=1)
    batch_size: int = field_help("Examples per step (pairs for the CTR RM).", default=16)
    eval_batch_size: int = field_help("Examples per forward pass when scoring.", default=64)
    max_len: int = field_help("Most tokens per input; the note body is cut to fit, the query never. Inputs that "
                              "cannot fit even without a body are skipped and counted.", default=512)
    max_train_examples: int = field_help("Use at most this many training examples (0: all).", default=0)
    checkpoint_every: int = field_help("Steps between checkpoints (a killed run resumes from the last one).",
                                       default=100)
    seed: int = field_help("Seed for initialisation and data order.", default=0)
    normalisation: str = field_help(
        "CTR RM only: how r_ctr is mapped into [0, 1] wherever it is scored: 'sigmoid', 'minmax' (per content) or "
        "'calibrated' (raw score -> click probability, isotonic on the validation split's logged CTR).",
        default="sigmoid")

    def __post_init__(self) -> None:
        require(self.finetune in ("auto", "lora", "full"), "finetune", "must be 'auto', 'lora' or 'full'")
        require(self.lora_r >= 1, "lora_r", "must be >= 1")
        require(0.0 <= self.lora_dropout < 1.0, "lora_dropout", "must be in [0, 1)")
        require(self.lr > 0, "lr", "must be > 0")
        require(self.epochs > 0, "epochs", "must be > 0")
        require(self.batch_size >= 1 and self.eval_batch_size >= 1, "batch_size", "must be >= 1")
        require(self.max_len >= 64, "max_len", "must be >= 64")
        require(self.checkpoint_every >= 1, "checkpoint_every", "must be >= 1")
        require(self.normalisation in ("sigmoid", "minmax", "calibrated"), "normalisation",
                "must be 'sigmoid', 'minmax' or 'calibrated'")
        require(self.patience >= 0, "patience", "must be >= 0")
        require(self.validate_every >= 0, "validate_every", "must be >= 0")
        require(1 <= self.members <= 16, "members", f"must be in [1, 16], got {self.members}")


@dataclass
class PolicyTrainConfig:
    """Optimisation shared by QSA and the preference methods (a `[sft]` or `[align]` section)."""

    model_dir: str = field_help("Overrides model.base_dir for this section alone (deprecated: set model.base_dir).",
                                default="")
    out: str = field_help("Output directory (adapter/, config.toml, metrics.json).", default="")
    lora_r: int = field_help("LoRA rank (the method: 32).", default=32)
    lora_alpha: int = field_help("LoRA alpha (the method: 8).", default=8)
    lr: float = field_help("Peak learning rate (the method: 1e-5 on a 7B base; the tiny model needs ~1e-3).",
                           default=1e-5)
    batch_size: int = field_help("Pairs (or SFT examples) per optimizer step (the method: global batch 32).", default=32)
    warmup_steps: int = field_help("Warm-up steps before cosine decay (20; capped at a tenth of a short run).",
                                   default=20)
    epochs: float = field_help("QSA: passes over D_SFT. Align: passes over each iteration's pairs (the method: 1).",
                               default=1.0)
    max_prompt_tokens: int = field_help("Prompt budget; the note body is cut to fit.", default=448)
    checkpoint_every: int = field_help("Steps between checkpoints inside a run.", default=100)
    seed: int = field_help("Seed for sampling contents, pairs and the data order.", default=0)

    def __post_init__(self) -> None:
        require(self.lora_r >= 1, "lora_r", "must be >= 1")
        require(self.lr > 0, "lr", "must be > 0")
        require(self.batch_size >= 1, "batch_size", "must be >= 1")
        require(self.epochs > 0, "epochs", "must be > 0")
        require(self.max_prompt_tokens >= 64, "max_prompt_tokens", "must be >= 64")


@dataclass
class AlignConfig(PolicyTrainConfig):
    """The CMAQ loop (Algorithm 1) and its ablations (`cmaq train align`)."""

    iterations: int = field_help("T: online iterations.", default=3)
    contents: int = field_help("N: contents sampled from D_SFT per iteration.", default=20_000)
    k: int = field_help("Queries sampled per content from the previous policy.", default=8)
    temperature: float = field_help("Sampling temperature (the method: 1.5).", default=1.5)
    alpha: float = field_help("Weight of expansion in the combined reward (larger: more expansion).", default=0.4)
    mean: str = field_help("'geometric' (CMAQ) or 'arithmetic' (the w/o CDS ablation).", default="geometric")
    nll_weight: float = field_help("λ: weight of the chosen query's per-token NLL.", default=0.5)
    gamma: float = field_help("γ: strength of the per-pair adaptive β.", default=0.2)
    beta0: float = field_help("β0: β = β0·β̃. 1 is the method's equation; TRL's usual scale is 0.1.", default=1.0)
    beta_floor: float = field_help("Smallest β̃ a pair gets (keeps every pair's β positive).", default=0.05)
    static_beta: bool = field_help("w/o CT ablation: β̃ ≡ 1.", default=False)
    reuse_first: bool = field_help("w/o OT ablation: the first iteration's preference pairs reused each iteration.",
                                   default=False)
    tau_mode: str = field_help("'quantile': τ1/τ2 are quantiles of the iteration's rewards; 'absolute': values.",
                               default="quantile")
    tau1: float = field_help("Positives: r > τ1 (a quantile in [0, 1] or an absolute reward).", default=0.7)
    tau2: float = field_help("Negatives: r < τ2 (a quantile in [0, 1] or an absolute reward).", default=0.3)
    qsa: str = field_help("The QSA adapter every method starts from.", default="runs/qsa/adapter")
    rm_exp: str = field_help("Expansion reward model directory.", default="runs/rm-exp")
    rm_ctr: str = field_help("CTR reward model directory.", default="runs/rm-ctr")
    sampler: str = field_help("Engine that samples the k queries: 'hf' or 'vllm'.", default="hf")
    sampler_batch: int = field_help("Contents per sampling call of the HF engine (k rows each): larger on a GPU.",
                                    default=16)
    sampler_memory_share: float = field_help(
        "vLLM sampler: the share of the device's memory its engine takes (weights, KV cache) for the whole run, "
        "beside the trainer, which keeps the rest; each iteration's adapter is a LoRARequest on the same base. "
        "0: engine.gpu_memory_utilization. On a GPU about 0.3 leaves 70% to training; too small and vLLM "
        "refuses to start (no room for the KV cache).", default=0.0)
    first_samples: str = field_help(
        "Parquet file of the QSA policy's samples and their two rewards. Iteration 1 of every run from the same "
        "QSA, seed, N, k and temperature (each α, the ablations, the baselines' preference set) samples the same "
        "queries, so they are drawn and scored once, kept here and reused; '' draws them in every run.", default="")
    baseline_epochs: float = field_help("Baselines (`cmaq train baseline`): epochs over their pairs (the method: 3).",
                                        default=3.0)
    reward: str = field_help(
        "'mean': each objective's reward is its RM ensemble's mean; 'lcb': the lower confidence bound "
        "mean − lcb_kappa·std over the ensemble's members (rm_*.members > 1), so the loop does not chase "
        "scores the members disagree on.", default="mean")
    lcb_kappa: float = field_help("κ of align.reward = 'lcb' (standard deviations below the mean).", default=1.0)
    reference: str = field_help(
        "The DPO reference of iteration t: 'previous' (π_{t−1}, the method) or 'qsa' (the QSA policy every "
        "iteration, which anchors the policy to its start).", default="previous")
    probe_contents: int = field_help(
        "Collapse guards: notes of D_SFT (a fixed probe set, the same for every seed) on which QSA and every "
        "iteration's policy are beam-searched and sampled (distinct top-1 share, top string share, beams "
        "passing the serving chain, KL to QSA); 0 turns the guards off. Cost: one beam search and k samples "
        "per note per iteration.", default=200)
    probe_k: int = field_help("Collapse guards: samples per probe note for the KL estimate.", default=4)
    select: str = field_help(
        "Which iteration <out>/adapter serves: 'last', or 'proxy' (the highest probe proxy: beams passing × "
        "lower-bound combined reward of the exposed queries + distinct top-1 share; needs probe_contents).",
        default="last")
    reward_gate: str = field_help(
        "'serving': every sampled candidate goes through the serving filter chain (filters.serving); one it drops "
        "is never chosen, may always be rejected, and τ1/τ2 are quantiles over the passing candidates; the "
        "sample-based baselines give it r_exp = r_ctr = 0. 'none': the reward models' scores alone.",
        default="serving")

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.iterations >= 1, "iterations", "must be >= 1")
        require(self.contents >= 1 and self.k >= 2, "k", "contents >= 1 and k >= 2")
        require(0.0 <= self.alpha <= 1.0, "alpha", "must be in [0, 1]")
        require(self.mean in ("geometric", "arithmetic"), "mean", "must be 'geometric' or 'arithmetic'")
        require(self.tau_mode in ("quantile", "absolute"), "tau_mode", "must be 'quantile' or 'absolute'")
        require(self.tau2 <= self.tau1, "tau2", "must be <= tau1")
        require(self.beta_floor > 0, "beta_floor", "must be > 0")
        require(self.reward_gate in ("serving", "none"), "reward_gate", "must be 'serving' or 'none'")
        require(0.0 <= self.sampler_memory_share < 1.0, "sampler_memory_share", "must be in [0, 1)")
        require(self.reward in ("mean", "lcb"), "reward", "must be 'mean' or 'lcb'")
        require(self.lcb_kappa >= 0, "lcb_kappa", "must be >= 0")
        require(self.reference in ("previous", "qsa"), "reference", "must be 'previous' or 'qsa'")
        require(self.probe_contents >= 0, "probe_contents", "must be >= 0")
        require(self.probe_k >= 1, "probe_k", "must be >= 1")
        require(self.select in ("last", "proxy"), "select", "must be 'last' or 'proxy'")
        require(self.select == "last" or self.probe_contents > 0, "select",
                "'proxy' needs the probe set (align.probe_contents > 0)")


@dataclass
class DistributedConfig:
    """How a training run uses several processes (`[distributed]`; :mod:`training.distributed`).

    One process needs no launcher. Several come from ``torchrun --nproc_per_node N -m cmaq.cli train ...``
    (on CPU too: gloo) or ``accelerate launch --config_file configs/accelerate/<file>.yaml -m cmaq.cli ...``;
    each is one rank of Hugging Face Accelerate. The global batch stays ``batch_size`` whatever the number
    of processes: each optimizer step's examples are cut into one piece per process (and per accumulation
    micro-batch), so N processes train the same adapter as one."""

    strategy: str = field_help(
        "'ddp' (every rank holds the whole model; gradients are averaged) or 'fsdp' (PyTorch FSDP: parameters, "
        "gradients and optimizer state sharded across ranks, for bases that do not fit one device). "
        "A launcher's Accelerate config (ACCELERATE_USE_FSDP) also selects FSDP. Ignored with one process.",
        default="ddp")
    fsdp_version: int = field_help("FSDP API: 2 (per-parameter sharding, fully_shard) or 1.", default=2)
    mixed_precision: str = field_help(
        "'auto': the launcher's Accelerate config (ACCELERATE_MIXED_PRECISION) if it sets one, else bf16 autocast "
        "on a GPU and none on the CPU; or 'no', 'bf16', 'fp16'. bf16 halves activation memory; fp16 adds a loss "
        "scaler.", default="auto")
    gradient_accumulation_steps: int = field_help(
        "Micro-batches per optimizer step on each process (the step's global batch is unchanged: each micro-batch "
        "is 1/(steps x processes) of it). Trades speed for activation memory.", default=1)
    timeout_s: int = field_help(
        "Seconds a rank waits at a collective (gradient all-reduce, gathers) for the others before the run fails "
        "naming the ranks that did not arrive, instead of hanging (at most 60).", default=60)

    def __post_init__(self) -> None:
        require(self.strategy in ("ddp", "fsdp"), "strategy", f"must be 'ddp' or 'fsdp', got {self.strategy!r}")
        require(self.fsdp_version in (1, 2), "fsdp_version", f"must be 1 or 2, got {self.fsdp_version}")
        require(self.mixed_precision in ("auto", "no", "bf16", "fp16"), "mixed_precision",
                f"must be 'auto', 'no', 'bf16' or 'fp16', got {self.mixed_precision!r}")
        require(self.gradient_accumulation_steps >= 1, "gradient_accumulation_steps", "must be >= 1")
        require(5 <= self.timeout_s <= 60, "timeout_s", f"must be in [5, 60], got {self.timeout_s}")
