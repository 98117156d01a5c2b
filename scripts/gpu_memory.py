"""Estimated GPU memory of `rapid train` per model preset on one GPU, from the models' sizes (docs/gpu.md).

    .venv/bin/python scripts/gpu_memory.py

An ESTIMATE, not a measurement: parameter counts come from each preset's architecture (built on the meta
device from the shapes in its published config.json, so nothing is downloaded), the rest from the defaults:
fp32 master weights + gradients + AdamW moments (16 bytes per parameter), the vLLM engine's bf16 copy, its
KV cache as sized by `engine_options` (a round's 128 completions at max_model_len 2048), activations of one
micro-batch of 8 sequences of ~400 tokens under bf16 autocast (a rough per-layer count, plus the logits of
the completion positions in bf16, their fp32 upcast, log-softmax and gradient), and vLLM's 4 GiB overhead
budget. A run logs the real peak as perf/gpu_mem_peak_gb_max.
"""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

from rapid_cli.config import compose_config
from rapid_cli.samplers.vllm import ENGINE_OVERHEAD, GiB, engine_options

SHAPES = {  # from each model's config.json on the Hugging Face Hub
    "smollm2-135m": LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                                num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True,
                                max_position_embeddings=8192),
    "qwen-0.5b": Qwen2Config(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                             num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True,
                             max_position_embeddings=32768),
    "llama-1b": LlamaConfig(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                            num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True, head_dim=64,
                            max_position_embeddings=131072),
    "qwen-1.5b": Qwen2Config(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                             num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True,
                             max_position_embeddings=131072),
}
SEQS = 4 * 8 * 4  # A*M*G completions of a round at the defaults
MICRO, TOKENS, COMPLETION = 8, 400, 256  # algo.micro_batch_size; prompt + completion tokens; sampler.max_tokens


def estimate(cfg, sampler_cfg) -> dict[str, float]:
    with torch.device("meta"):
        n = sum(p.numel() for p in AutoModelForCausalLM.from_config(cfg).parameters())
    # what a run would reserve
    kv = engine_options(sampler_cfg, True, cfg, n, 2, SEQS, 80 * GiB)["kv_cache_memory_bytes"]
    tokens = MICRO * TOKENS
    layers = cfg.num_hidden_layers * tokens * (10 * cfg.hidden_size + 3 * cfg.intermediate_size) * 2
    logits = MICRO * (COMPLETION + 1) * cfg.vocab_size * (2 + 4 + 4 + 4)
    parts = {"params": n, "trainer": 16 * n, "engine": 2 * n, "kv": kv, "activations": layers + logits}
    parts["total"] = parts["trainer"] + parts["engine"] + kv + parts["activations"] + ENGINE_OVERHEAD
    parts["reference"] = 4 * n  # algo=grpo's frozen fp32 copy
    return parts


def main() -> None:
    print("| preset | parameters | trainer: fp32 weights, grads, AdamW | vLLM bf16 weights | KV cache | activations "
          "(micro-batch 8) | total (+4 GiB vLLM overhead) | algo=grpo adds |")
    print("|---|---|---|---|---|---|---|---|")
    sampler_cfg = compose_config(["sampler=vllm"]).sampler
    for name, cfg in SHAPES.items():
        e = estimate(cfg, sampler_cfg)
        gib = {k: f"{v / GiB:.1f} GiB" for k, v in e.items()}
        print(f"| {name} | {e['params'] / 1e9:.2f} B | {gib['trainer']} | {gib['engine']} | {gib['kv']} | "
              f"{gib['activations']} | **{gib['total']}** | {gib['reference']} |")


if __name__ == "__main__":
    main()
