"""The effective configuration: one dataclass per concern, loaded from TOML, overridable per key.

Sections live one module per package they configure (``world``, ``filters``, ``engines``, ``jobs``,
``training``, ``reproduce``) over one shared loader (:mod:`cmaq.config.loader`). They sit in the
ground layer, not beside the trainers and Spark jobs they configure, because the root
:class:`CmaqConfig` is read by both ``jobs`` and ``training``, which may not import each other, and
the core installs without Spark or torch.

Every field carries a ``help`` text (``cmaq config show --help-fields``, and the CLI's option help)
and every section validates itself in ``__post_init__``; an error names the key as the user writes it::

    cfg = load_config("cmaq.toml", overrides=["world.items=5000", "world.seed=7"])
    cfg.world.items  # -> 5000
    load_config(None, ["rm_exp.lora_r=0"])  # ConfigError: rm_exp.lora_r: must be >= 1
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from cmaq.config.engines import EngineConfig, ModelConfig
from cmaq.config.filters import (DEFAULT_COMMERCIAL_EN, DEFAULT_COMMERCIAL_ZH, FILTER_NAMES, CommercialConfig,
                                 FiltersConfig, HarmConfig, LexicalConfig, RelevanceConfig, SimilarityConfig)
from cmaq.config.jobs import ArmConfig, DataConfig, PoolConfig, StreamConfig
from cmaq.config.loader import (ConfigDeprecation, ConfigError, FieldError, build, config_hash, field_help,
                                help_of, parse_override, read_tree, to_dict, to_toml, warn_deprecated, with_values)
from cmaq.config.reproduce import ReproduceConfig
from cmaq.config.training import AlignConfig, DistributedConfig, PolicyTrainConfig, RewardModelConfig
from cmaq.config.world import WorldConfig

__all__ = ["AlignConfig", "ArmConfig", "CmaqConfig", "CommercialConfig", "ConfigDeprecation", "ConfigError", "DataConfig",
           "DistributedConfig",
           "DEFAULT_COMMERCIAL_EN", "DEFAULT_COMMERCIAL_ZH", "EngineConfig", "FILTER_NAMES", "FieldError",
           "FiltersConfig", "HarmConfig", "LexicalConfig", "ModelConfig", "PolicyTrainConfig", "PoolConfig",
           "RelevanceConfig", "ReproduceConfig", "RewardModelConfig", "SimilarityConfig", "StreamConfig", "WorldConfig",
           "config_hash", "help_of", "load_config", "parse_override", "to_dict", "to_toml", "with_values"]

#: Sections whose own ``model_dir`` overrides ``model.base_dir``: the way to set the base model
#: before there was one setting for it.
MODEL_DIR_SECTIONS = ("engine", "rm_exp", "rm_ctr", "sft", "align")


@dataclass
class CmaqConfig:
    """The whole effective configuration, one section per concern."""

    world: WorldConfig = field_help("Synthetic world generator.", default_factory=WorldConfig)
    filters: FiltersConfig = field_help("Query filters for serving and training data.",
                                        default_factory=FiltersConfig)
    model: ModelConfig = field_help("The base model every model starts from.", default_factory=ModelConfig)
    engine: EngineConfig = field_help("Generation engine (beam search for serving, sampling for training).",
                                      default_factory=EngineConfig)
    data: DataConfig = field_help("Training-data builders.", default_factory=DataConfig)
    pool: PoolConfig = field_help("Recall-pool job.", default_factory=PoolConfig)
    stream: StreamConfig = field_help("Nearline as a stream (`cmaq pool stream`).", default_factory=StreamConfig)
    rm_exp: RewardModelConfig = field_help("Expansion reward model (answers 1 or 0).",
                                           default_factory=RewardModelConfig)
    rm_ctr: RewardModelConfig = field_help("CTR reward model (scalar head, BPR loss on CTR pairs).",
                                           default_factory=RewardModelConfig)
    sft: PolicyTrainConfig = field_help("Query style alignment (QSA): LoRA SFT on D_SFT.",
                                        default_factory=PolicyTrainConfig)
    align: AlignConfig = field_help("The CMAQ loop and its ablations.", default_factory=AlignConfig)
    distributed: DistributedConfig = field_help("Training on several processes (DDP or FSDP via Accelerate).",
                                                default_factory=DistributedConfig)
    reproduce: ReproduceConfig = field_help("`cmaq reproduce`: the whole chain and its report.",
                                            default_factory=ReproduceConfig)


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> CmaqConfig:
    """Read a TOML file (optional), apply ``section.key=value`` overrides in order, validate everything."""
    tree = read_tree(path, overrides)
    warn_deprecated(tree, {f"{s}.model_dir": f"set model.base_dir (the base of every model); {s}.model_dir "
                                             f"still overrides it for {s} alone" for s in MODEL_DIR_SECTIONS})
    return build(CmaqConfig, tree)
