"""The trained model: loading, batch packing and per-token log-probabilities."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from rapid_cli.errors import RapidError
from rapid_cli.hub import hub_error, offline_unless_reachable
from rapid_cli.models import resolve_model

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_device(name: str) -> torch.device:
    """`auto`: CUDA when torch can use it, else the CPU, but never the CPU while the driver shows a GPU that torch
    cannot use (an old driver for torch's CUDA): that is an error naming both versions (rapid_cli.gpu)."""
    from rapid_cli.gpu import check_cuda_usable, nvidia_smi, unusable_gpu_message

    if name == "auto":
        check_cuda_usable()
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        view = nvidia_smi()
        raise RapidError(unusable_gpu_message(view) if view.gpus else "device=cuda but no CUDA GPU is visible; use device=cpu")
    return torch.device(name)


def load_policy(model_cfg, device: torch.device, cache_dir: str | None = None):
    """Returns (model, tokenizer, local_or_hub_path)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    path = resolve_model(model_cfg, cache_dir)
    if Path(path).is_dir():
        check_model_files(Path(path))
    else:
        offline_unless_reachable()
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=model_cfg.trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=DTYPES[model_cfg.dtype], trust_remote_code=model_cfg.trust_remote_code
        )
    except OSError as err:
        if Path(path).is_dir():  # the hub was never involved: the local files are at fault
            raise RapidError(f"could not load the model in {path}: {str(err).splitlines()[0]}") from None
        hub = hub_error()
        why = f"the hub is not reachable: {hub}" if hub else str(err).splitlines()[0]
        raise RapidError(
            f"could not load model {model_cfg.path!r}: not a local directory, and {why}; "
            "check the id and network, or use model.path=<local dir> or model=smollm2-135m (offline)"
        ) from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    disable_dropout(model)
    if model_cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    model.config.use_cache = True
    return model.to(device), tokenizer, path


def check_model_files(path: Path) -> None:
    """A broken config.json or a truncated / overwritten weights file, named before transformers trips on it."""
    import json

    from safetensors import SafetensorError, safe_open

    try:
        json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as err:
        raise RapidError(f"{path / 'config.json'} is not a valid model config ({err}); restore it or point model.path "
                         "at an intact model directory") from None
    for weights in sorted(path.glob("*.safetensors")):
        try:
            with safe_open(weights, "pt"):
                pass
        except (SafetensorError, OSError) as err:
            raise RapidError(f"{weights} is damaged ({err}); restore it, or use a checkpoint from before the "
                             "damage") from None


def context_length(model) -> int | None:
    """Tokens the model can attend over (max_position_embeddings), if its config says."""
    return getattr(model.config, "max_position_embeddings", None)


def check_fits(model, max_tokens: int, longest_prompt: int, key: str) -> None:
    """A prompt plus `max_tokens` must fit the model's context: past it, decoding runs on garbage positions."""
    limit = context_length(model)
    if limit is not None and longest_prompt + max_tokens > limit:
        raise RapidError(f"{key}={max_tokens} plus the longest prompt ({longest_prompt} tokens) exceeds the model's "
                         f"context of {limit} tokens; lower {key} to at most {max(1, limit - longest_prompt)}")


def disable_dropout(model) -> None:
    """Sets every dropout probability of `model` to 0, in its config and in its modules. pi_old is taken
    in eval mode (sampler, recompute) and the update runs in train mode: with dropout on, the policy being
    trained would not be the one that sampled, and the first step's weights would not be 1. (Transformers'
    attention reads the rate from a float attribute, not an nn.Dropout, so both are reset; train mode itself
    stays on, since gradient checkpointing needs it.)"""
    configs = [model.config, *(v for v in vars(model.config).values() if hasattr(v, "to_dict"))]  # sub-configs too
    for obj in (*configs, *model.modules()):
        if isinstance(obj, torch.nn.modules.dropout._DropoutNd):
            obj.p = 0.0
        for key, value in list(vars(obj).items()):
            if "dropout" in key and isinstance(value, float):
                setattr(obj, key, 0.0)


def stop_token_ids(model, tokenizer) -> set[int]:
    ids = {tokenizer.eos_token_id}
    gen_eos = getattr(model.generation_config, "eos_token_id", None)
    ids.update(gen_eos if isinstance(gen_eos, list) else [gen_eos])
    return {i for i in ids if i is not None}


@dataclass
class PackedBatch:
    """Prompts left-padded to P, completions right-padded to C, side by side: row i is [pad.. prompt | completion ..pad].

    input_ids, attention_mask, position_ids: [B, P + C]
    completion_ids, completion_mask: [B, C] (mask 1 on real completion tokens)
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor

    @property
    def prompt_width(self) -> int:
        return self.input_ids.shape[1] - self.completion_ids.shape[1]


def pack(prompts: list[list[int]], completions: list[list[int]], pad_id: int, device) -> PackedBatch:
    P = max(len(p) for p in prompts)
    C = max(1, max(len(c) for c in completions))
    B = len(prompts)
    input_ids = torch.full((B, P + C), pad_id, dtype=torch.long)
    attention = torch.zeros((B, P + C), dtype=torch.long)
    for i, (p, c) in enumerate(zip(prompts, completions, strict=True)):
        input_ids[i, P - len(p) : P] = torch.tensor(p)
        input_ids[i, P : P + len(c)] = torch.tensor(c, dtype=torch.long)
        attention[i, P - len(p) : P + len(c)] = 1
    position_ids = (attention.cumsum(-1) - 1).clamp(min=0)  # [B, P+C]
    completion_mask = attention[:, P:].clone()  # [B, C]
    return PackedBatch(
        input_ids.to(device),
        attention.to(device),
        position_ids.to(device),
        input_ids[:, P:].to(device),
        completion_mask.to(device),
    )


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, temperature: float) -> torch.Tensor:
    """log softmax(logits / T)[target] per position. logits [B, C, V], targets [B, C] -> [B, C] float32."""
    logits = logits.float() / temperature
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def completion_logprobs(model, batch: PackedBatch, temperature: float) -> torch.Tensor:
    """Per-token log pi(completion token) under `model` at the sampling temperature: [B, C]."""
    C = batch.completion_ids.shape[1]
    # Only the positions that predict completion tokens go through the LM head: the last C+1 positions,
    # whose final one predicts past the end and is dropped.
    out = model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        use_cache=False,
        logits_to_keep=C + 1,
    )
    logits = out.logits[:, :-1]  # [B, C, V]
    return token_logprobs(logits, batch.completion_ids, temperature)
