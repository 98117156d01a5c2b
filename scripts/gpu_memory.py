"""Estimated GPU memory of `rapid train` per model preset on one GPU, full fine-tuning and LoRA (docs/gpu.md).

    .venv/bin/python scripts/gpu_memory.py

An ESTIMATE, not a measurement: parameter counts come from each model's architecture (built on the meta
device from the shapes in its published config.json, so nothing is downloaded), the rest from the defaults.
Full fine-tuning: fp32 master weights + gradients + AdamW moments (16 bytes per parameter). LoRA
(`lora=default model.dtype=bfloat16`): the frozen base in bf16 (2 bytes per parameter, no gradient, no
moments) and the adapters' 16 bytes per parameter (rank `lora.r` on every linear layer of the decoder).
QLoRA (`lora=qlora model.dtype=bfloat16`): the decoder's linear layers in 4-bit NF4 with double quantization
(0.5 bytes a weight plus 0.127 bits of block statistics), the embeddings, norms and LM head in bf16; the engine
still gets a bf16 copy (the dequantized base).
Both: the vLLM engine's bf16 copy, its KV cache as sized by `engine_options` (a round's 128 completions at
max_model_len 2048), activations of one micro-batch of 8 sequences of ~400 tokens under bf16 autocast (a
rough per-layer count, plus the logits of the completion positions in bf16, their fp32 upcast, log-softmax
and gradient; the adapters' rank-r intermediates are left out, under 1% of it), and vLLM's 4 GiB overhead
budget. LoRA's total is given again at the settings a 24 GiB card needs for 1-3B models (`algo.micro_batch_size=2
sampler.kv_cache_gb=2`). A run logs the real peak as perf/gpu_mem_peak_gb_max.
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
    "qwen-0.5b, qwen-0.5b-instruct": Qwen2Config(hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                                                 num_attention_heads=14, num_key_value_heads=2, vocab_size=151936,
                                                 tie_word_embeddings=True, max_position_embeddings=32768),
    "llama-1b": LlamaConfig(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                            num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True, head_dim=64,
                            max_position_embeddings=131072),
    "qwen-1.5b": Qwen2Config(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                             num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True,
                             max_position_embeddings=131072),
    "Qwen/Qwen2.5-3B (no preset)": Qwen2Config(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                                               num_attention_heads=16, num_key_value_heads=2, vocab_size=151936,
                                               tie_word_embeddings=True, max_position_embeddings=32768),
}
SEQS = 4 * 8 * 4  # A*M*G completions of a round at the defaults
MICRO, TOKENS, COMPLETION = 8, 400, 256  # algo.micro_batch_size; prompt + completion tokens; sampler.max_tokens
CARDS = (24, 80)  # GiB; a card "fits" when the total leaves 1 GiB of it for the CUDA context
# LoRA on a 24 GiB card: smaller micro-batches (activations scale with them) and a KV cache just big enough for
# a round's 128 completions of ~400 tokens (sampler.kv_cache_gb; vLLM runs fewer at once if it is not)
SMALL = {"micro": 2, "kv_gb": 2}


def adapter_params(model, r: int) -> int:
    """Parameters of rank-r LoRA on every linear layer but the LM head (peft's all-linear): r x (in + out) each."""
    head = model.get_output_embeddings()
    return sum(r * (m.in_features + m.out_features) for m in model.modules()
               if isinstance(m, torch.nn.Linear) and m is not head)


NF4_BYTES = 0.5 + 0.127 / 8  # bitsandbytes NF4, double-quantized absmax (QLoRA's 4.127 bits a weight)


def linear_params(model) -> int:
    """Weights of the decoder's linear layers (what lora=qlora holds in 4 bits): every nn.Linear but the LM head."""
    head = model.get_output_embeddings()
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not head)


def estimate(cfg, sampler_cfg, r: int, micro: int = MICRO, kv_gb: float | None = None) -> dict[str, float]:
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    n = sum(p.numel() for p in model.parameters())
    adapters = adapter_params(model, r)
    # what a run would reserve
    kv = engine_options(sampler_cfg, True, cfg, n, 2, SEQS, 80 * GiB)["kv_cache_memory_bytes"]
    kv = kv if kv_gb is None else int(kv_gb * GiB)
    tokens = micro * TOKENS
    layers = cfg.num_hidden_layers * tokens * (10 * cfg.hidden_size + 3 * cfg.intermediate_size) * 2
    logits = micro * (COMPLETION + 1) * cfg.vocab_size * (2 + 4 + 4 + 4)
    linear = linear_params(model)
    parts = {"params": n, "adapters": adapters, "trainer": 16 * n, "lora_trainer": 2 * n + 16 * adapters,
             "qlora_trainer": 2 * (n - linear) + NF4_BYTES * linear + 16 * adapters,
             "engine": 2 * n, "kv": kv, "activations": layers + logits}
    shared = parts["engine"] + kv + parts["activations"] + ENGINE_OVERHEAD
    parts["total"] = parts["trainer"] + shared
    parts["lora_total"] = parts["lora_trainer"] + shared
    parts["qlora_total"] = parts["qlora_trainer"] + shared
    parts["reference"] = 4 * n  # algo=grpo's frozen copy of the initial policy: fp32
    parts["lora_reference"] = 2 * n + 4 * adapters  # with LoRA: the bf16 base and the float32 adapters
    return parts


def fits(total: float) -> str:
    return ", ".join(f"{card}" for card in CARDS if total + GiB <= card * GiB) or "neither"


def main() -> None:
    r = compose_config(["lora=default"]).lora.r
    small = f"micro-batch {SMALL['micro']}, KV {SMALL['kv_gb']} GiB"
    print(f"| model | parameters | full: fp32 weights, grads, AdamW | LoRA r={r}, bf16 base: base + adapters | "
          f"QLoRA r={r}, nf4 base | vLLM bf16 weights | KV cache | activations (micro-batch 8) | total full / LoRA / "
          f"QLoRA (+4 GiB vLLM overhead) | total LoRA / QLoRA, {small} | fits a 24 / 80 GiB card: full; LoRA; "
          f"LoRA, {small}; QLoRA, {small} | algo=grpo adds full / LoRA |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    sampler_cfg = compose_config(["sampler=vllm"]).sampler
    for name, cfg in SHAPES.items():
        e = estimate(cfg, sampler_cfg, r)
        s = estimate(cfg, sampler_cfg, r, SMALL["micro"], SMALL["kv_gb"])
        gib = {k: f"{v / GiB:.1f} GiB" for k, v in e.items()}
        print(f"| {name} | {e['params'] / 1e9:.2f} B | {gib['trainer']} | {gib['lora_trainer']} "
              f"({e['adapters'] / 1e6:.1f} M adapter parameters) | {gib['qlora_trainer']} | {gib['engine']} | "
              f"{gib['kv']} | {gib['activations']} | **{gib['total']} / {gib['lora_total']} / {gib['qlora_total']}** "
              f"| **{s['lora_total'] / GiB:.1f} GiB / {s['qlora_total'] / GiB:.1f} GiB** | {fits(e['total'])}; "
              f"{fits(e['lora_total'])}; {fits(s['lora_total'])}; {fits(s['qlora_total'])} | {gib['reference']} / "
              f"{gib['lora_reference']} |")


if __name__ == "__main__":
    main()
