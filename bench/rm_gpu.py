"""Training throughput of both reward models on a ~0.5B-parameter Qwen2 (random initialisation, no
download), bf16 on a GPU. Prints one JSON object with tokens/s per RM.

    python bench/rm_gpu.py                 # on a GPU machine: Qwen2-0.5B shape, bf16
    python bench/rm_gpu.py --size tiny     # anywhere: a small shape, to check the script runs

Each step is the real loss on real shapes: the expansion RM's next-token loss at the answer position
and the CTR RM's BPR loss on (y+, y-) pairs, through the same model classes, LoRA and losses as
`cmaq train rm-exp` / `rm-ctr`; only the token ids are random (the speed does not depend on them).
"""
from __future__ import annotations

import argparse
import json
import time

SHAPES = {
    # Qwen2-0.5B's published configuration.
    "0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2, vocab_size=151936),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=1024),
}


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=sorted(SHAPES), default="0.5b")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--batch", type=int, default=16, help="Examples (expansion) or pairs (CTR) per step.")
    p.add_argument("--steps", type=int, default=5, help="Timed steps after one warm-up step.")
    return p


def main(args: argparse.Namespace) -> dict:
    import torch
    from peft import get_peft_model
    from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen2ForSequenceClassification

    from cmaq.losses import answer_nll, bpr_loss
    from training.reward_models.models import lora_config

    cuda = torch.cuda.is_available()
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    shape = SHAPES[args.size]
    def config(**extra):
        return Qwen2Config(**shape, max_position_embeddings=max(2048, args.seq_len), pad_token_id=0,
                           tie_word_embeddings=True, **extra)

    torch.manual_seed(0)
    out = {"bench": "rm_gpu", "device": torch.cuda.get_device_name() if cuda else "cpu", "dtype": str(dtype),
           "size": args.size, "seq_len": args.seq_len, "batch": args.batch}

    def timed(model, step) -> float:
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-4)
        step(opt)  # warm-up: kernels, allocator
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step(opt)
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    ids = torch.randint(1, shape["vocab_size"], (args.batch, args.seq_len), device=device)
    mask = torch.ones_like(ids)

    exp = get_peft_model(Qwen2ForCausalLM(config()).to(device, dtype), lora_config("expansion", 32, 64, 0.0))
    out["parameters"] = sum(p.numel() for p in exp.parameters())
    targets = torch.randint(0, 2, (args.batch,), device=device)

    def exp_step(opt):
        logits = exp(input_ids=ids, attention_mask=mask).logits[:, -1].float()
        loss = answer_nll(logits, targets)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    seconds = timed(exp, exp_step)
    out["rm_exp_tokens_per_s"] = round(args.steps * args.batch * args.seq_len / seconds)
    exp = None  # free the first model before building the second

    ctr = get_peft_model(Qwen2ForSequenceClassification(config(num_labels=1)).to(device, dtype),
                         lora_config("ctr", 32, 64, 0.0))
    pair_ids = torch.randint(1, shape["vocab_size"], (2 * args.batch, args.seq_len), device=device)

    def ctr_step(opt):
        r = ctr(input_ids=pair_ids, attention_mask=torch.ones_like(pair_ids)).logits[:, 0].float()
        loss = bpr_loss(r[:args.batch], r[args.batch:])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    seconds = timed(ctr, ctr_step)
    out["rm_ctr_tokens_per_s"] = round(args.steps * 2 * args.batch * args.seq_len / seconds)
    if cuda:
        out["peak_gpu_memory_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return out


if __name__ == "__main__":
    print(json.dumps(main(make_parser().parse_args())))
