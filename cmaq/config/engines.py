"""``[model]`` and ``[engine]``: the base model every model starts from, and the generation engines
(:mod:`cmaq.engines`)."""
from __future__ import annotations

from dataclasses import dataclass

from cmaq.config.loader import field_help, require

#: The engine settings that decide which beams are served (the rest place or batch the work): the
#: nightly's config hash covers them and the simulated A/B records them.
DECODING_FIELDS = ("max_model_len", "max_new_tokens", "beam_width", "length_penalty", "dtype")


@dataclass
class ModelConfig:
    """The one base-model setting: every model of the project starts from this directory."""

    base_dir: str = field_help(
        "Base model directory (HF format) of every model: the serving and sampling engines, both reward "
        "models, QSA, the CMAQ loop and the evaluation. Empty: the project's own model `factory` names, "
        "made on first use and cached. A section's own model_dir overrides it for that section alone.", default="")
    factory: str = field_help(
        "Which of the project's own models an empty base_dir means: 'tiny' (2 layers x 128, built in about a "
        "minute; the unit tests' model, too small to copy from its prompt) or 'task' (4 layers x 192, committed "
        "weights from `make model`; what the demo and the reproduction use).", default="tiny")

    def __post_init__(self) -> None:
        require(self.factory in ("tiny", "task"), "factory", f"must be 'tiny' or 'task', got {self.factory!r}")


@dataclass
class EngineConfig:
    """Generation engines (cmaq.engines). Each setting says why it has its default."""

    backend: str = field_help("'vllm' (production and CI: vLLM, GPU or its CPU build), 'hf' (transformers), or "
                              "'package.module:Class' for an engine of your own (tests use doubles).", default="vllm")
    model_dir: str = field_help("Overrides model.base_dir for the engines alone (deprecated: set model.base_dir).",
                                default="")
    dtype: str = field_help("Weights dtype. float32 on CPU: bf16 matmuls are slow there and change beams; use "
                            "bfloat16 on GPUs.", default="float32")
    max_model_len: int = field_help("Context limit per request; prompts are cut to fit it with max_new_tokens.",
                                    default=1024)
    max_new_tokens: int = field_help("Tokens a query may take: 15 words, or 15 CJK characters, with room to end.",
                                     default=32)
    beam_width: int = field_help("Beams kept and queries returned by beam search (the job serves 5).", default=5)
    beam_shared_prefill: bool = field_help(
        "Transformers engine: prefill each prompt once and copy its cache to the beams, instead of "
        "prefilling it once per beam (same result, a fraction of the prompt compute).", default=True)
    length_penalty: float = field_help(
        "Beam score = sum logprob / length^penalty. vLLM counts prompt + output tokens, transformers only "
        "output tokens, so only 0 (pure summed log-probability) means the same in both; the simulated A/B "
        "(transformers) decodes as the nightly (vLLM) does only at 0, and refuses any other value.",
        default=0.0)
    gpu_memory_utilization: float = field_help(
        "vLLM memory share. On the CPU build it is the share of the NUMA node's RAM for the KV cache; "
        "0.1-0.2 works on an 8.7 GiB node, 0.05 and the GPU default 0.9 fail.", default=0.15)
    enforce_eager: bool = field_help("Skip CUDA graphs / compilation: tiny models gain nothing and start faster.",
                                     default=True)
    adapter_mode: str = field_help(
        "How an adapter is served: 'merged' merges its LoRA weights into the base once (cached by base and "
        "adapter hash) and serves a plain model, at the bare model's speed; 'lora' applies it per request "
        "(vLLM multi-LoRA: one engine serves many adapters, 7x slower beam search on vLLM's CPU build); "
        "'auto' merges on CPU and uses LoRA on a GPU. Records keep the base's and the adapter's hashes "
        "either way.", default="auto")
    merge_cache: str = field_help(
        "Directory of merged models. Empty: the project's model cache (CMAQ_CACHE). On a cluster, storage "
        "every executor reads (the driver merges, the executors load).", default="")
    max_lora_rank: int = field_help(
        "Largest LoRA rank served in 'lora' mode; 0 follows the served adapters' rank (rounded up to vLLM's "
        "sizes). vLLM pads every adapter to it and its CPU LoRA kernels' cost grows with it (beam search "
        "with an adapter: 8.4 s at 8, 30 s at 32 for 10 items here).", default=0)
    max_loras: int = field_help("Adapters vLLM keeps loaded at once (evaluation compares many).", default=4)
    tensor_parallel_size: int = field_help("GPUs per engine; 1 on CPU.", default=1)
    distributed_executor_backend: str = field_help(
        "vLLM's executor: '' (its own choice) or 'external_launcher', an engine inside each process of a "
        "torchrun / accelerate launch (the training loop's sampler on several GPUs: one engine per rank, on "
        "the rank's GPU, beside its trainer). Set by the training loop; not measured on GPUs here.", default="")
    chunked_prefill: bool = field_help(
        "Let vLLM split a long prompt's prefill across steps. Off: vLLM's CPU build cannot rewind a seeded "
        "request's random generator after a split ('CPU Generator does not use offset'), and the training "
        "loop's sampling is seeded. Turn on for GPU throughput.", default=False)
    hf_batch_size: int = field_help("Prompts per transformers generate call (memory vs speed).", default=16)
    seed: int = field_help("Engine seed (sampling seeds are derived per request from the call's seed).", default=0)

    def __post_init__(self) -> None:
        require(self.backend in ("vllm", "hf") or ":" in self.backend, "backend",
                 f"must be 'vllm', 'hf' or 'package.module:Class', got {self.backend!r}")
        require(self.dtype in ("float32", "bfloat16", "float16", "auto"), "dtype",
                 f"must be float32, bfloat16, float16 or auto, got {self.dtype!r}")
        require(self.max_new_tokens >= 1, "max_new_tokens", "must be >= 1")
        require(self.max_model_len > self.max_new_tokens + 16, "max_model_len",
                 f"must exceed max_new_tokens + 16 ({self.max_new_tokens + 16}), got {self.max_model_len}")
        require(1 <= self.beam_width <= 32, "beam_width", f"must be in [1, 32], got {self.beam_width}")
        require(0.0 < self.gpu_memory_utilization <= 1.0, "gpu_memory_utilization",
                 f"must be in (0, 1], got {self.gpu_memory_utilization}")
        require(self.max_lora_rank in (0, 8, 16, 32, 64, 128, 256, 320, 512), "max_lora_rank",
                 f"must be 0 (the adapters' rank) or one of 8, 16, 32, 64, 128, 256, 320, 512 (vLLM's sizes), "
                 f"got {self.max_lora_rank}")
        require(self.adapter_mode in ("lora", "merged", "auto"), "adapter_mode",
                 f"must be 'lora', 'merged' or 'auto', got {self.adapter_mode!r}")
        require(self.distributed_executor_backend in ("", "external_launcher", "mp", "uni", "ray"),
                "distributed_executor_backend",
                f"must be '', 'external_launcher', 'mp', 'uni' or 'ray', got {self.distributed_executor_backend!r}")
        for key in ("max_loras", "tensor_parallel_size", "hf_batch_size"):
            require(getattr(self, key) >= 1, key, "must be >= 1")
