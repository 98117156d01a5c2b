"""The trained model: loading, batch packing and per-token log-probabilities."""

from __future__ import annotations

import contextlib
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
        raise RapidError(unusable_gpu_message(view) if view.gpus
                         else "device=cuda but no CUDA GPU is visible; use device=cpu")
    return torch.device(name)


def load_policy(model_cfg, device: torch.device, cache_dir: str | None = None, lora_cfg=None,
                adapter: Path | None = None):
    """Returns (model, tokenizer, local_or_hub_path of the full weights). With `lora_cfg.enabled`, fresh LoRA
    adapters are injected; `adapter` (or a model.path that is an adapter directory) loads a trained one onto the
    base model its adapter_config.json names, and the path returned is that base's."""
    from omegaconf import OmegaConf
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from rapid_cli import lora

    hf_logging.disable_progress_bar()
    path = resolve_model(model_cfg, cache_dir)
    if adapter is None and lora.is_adapter_dir(path):
        adapter = Path(path)
        model_cfg = OmegaConf.merge(model_cfg, {"path": lora.adapter_base(adapter)})
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
    if adapter is not None:
        lora.add_adapters(model, saved=adapter)
    elif lora_cfg is not None and lora_cfg.enabled:
        lora.add_adapters(model, lora_cfg)
    disable_dropout(model)
    if model_cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        if lora.has_adapters(model):
            model.enable_input_require_grads()  # frozen embeddings: checkpointed blocks still need a grad path
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
    """A prompt plus `max_tokens` must fit the model's context: past it, decoding runs on garbage positions.
    `longest_prompt` may say whose it is (tasks.base.PromptLength: file and row for task=custom)."""
    limit = context_length(model)
    if limit is None or longest_prompt + max_tokens <= limit:
        return
    if max_tokens >= limit:
        raise RapidError(f"{key}={max_tokens} leaves no room for a prompt in the model's context of {limit} tokens; "
                         f"lower {key}")
    where = getattr(longest_prompt, "where", "")
    drop = f"task.max_prompt_tokens={limit - max_tokens} to leave out longer prompts"
    if longest_prompt >= limit:
        raise RapidError(f"the prompt of {where or 'a problem'} is {longest_prompt} tokens, longer than the model's "
                         f"context of {limit} tokens; shorten or remove it, or set {drop}")
    raise RapidError(f"{key}={max_tokens} plus the longest prompt ({longest_prompt} tokens"
                     + (f", {where}" if where else "") + f") exceeds the model's context of {limit} tokens; lower "
                     f"{key} to at most {limit - longest_prompt}, or set {drop}")


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
    """Prompts left-padded to P, completions right-padded to C, side by side:
    row i is [pad.. prompt | completion ..pad].

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


@dataclass
class GroupedBatch:
    """Prompt groups packed with their prompt once (`algo.packing`): row r is group r's prompt followed by
    its G completions back to back, right-padded to the longest group,

        [prompt | completion 1 | completion 2 | ... | completion G | pad ..]

    The mask lets a completion's tokens see the prompt and that completion's earlier tokens only, and its
    position ids continue from the prompt's, so every completion token gets exactly the log-prob it gets in
    [prompt | completion] alone (same forward values and gradients), while the prompt is encoded once
    instead of G times and no completion is padded to the longest one.

    input_ids, position_ids: [R, L]; attention_mask: [R, 1, L, L] bool (True: may attend)
    source: [b, C] index into the R*L positions: the position whose output predicts each completion token
    completion_ids, completion_mask: [b, C], the same layout as PackedBatch's
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    attention_mask: torch.Tensor
    source: torch.Tensor
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor


def pack_groups(prompts: list[list[int]], completions: list[list[int]], group_size: int, pad_id: int,
                device) -> GroupedBatch:
    """`prompts`: one per group; `completions`: G per group, group by group."""
    G, R = group_size, len(prompts)
    if len(completions) != R * G:
        raise ValueError(f"{len(completions)} completions for {R} groups of {G}")
    L = max(len(p) + sum(len(c) for c in completions[r * G : (r + 1) * G]) for r, p in enumerate(prompts))
    C = max(1, max(len(c) for c in completions))
    input_ids = torch.full((R, L), pad_id, dtype=torch.long)
    position_ids = torch.zeros((R, L), dtype=torch.long)
    segment = torch.full((R, L), -2, dtype=torch.long)  # -1: the prompt, j: completion j, -2: padding
    source = torch.zeros((R * G, C), dtype=torch.long)
    completion_ids = torch.full((R * G, C), pad_id, dtype=torch.long)
    completion_mask = torch.zeros((R * G, C), dtype=torch.float32)
    for r, prompt in enumerate(prompts):
        P = len(prompt)
        input_ids[r, :P] = torch.tensor(prompt, dtype=torch.long)
        position_ids[r, :P] = torch.arange(P)
        segment[r, :P] = -1
        start = P
        for j, comp in enumerate(completions[r * G : (r + 1) * G]):
            n, row = len(comp), r * G + j
            if n:
                input_ids[r, start : start + n] = torch.tensor(comp, dtype=torch.long)
                position_ids[r, start : start + n] = torch.arange(P, P + n)
                segment[r, start : start + n] = j
                # token 0 is predicted by the prompt's last position, token t by the completion's token t-1
                source[row, :n] = r * L + torch.cat([torch.tensor([P - 1]), torch.arange(start, start + n - 1)])
                completion_ids[row, :n] = torch.tensor(comp, dtype=torch.long)
                completion_mask[row, :n] = 1
            start += n
    causal = torch.ones((L, L), dtype=torch.bool).tril()  # [query, key]
    seen = (segment[:, None, :] == -1) | (segment[:, None, :] == segment[:, :, None])  # [R, query, key]
    # A padding query attends to itself: a row with nothing to attend to would be NaN, and NaN reaches the
    # real tokens' gradients through attention's backward even where the output is never used.
    mask = (causal & seen & (segment[:, :, None] != -2)) | torch.eye(L, dtype=torch.bool)
    return GroupedBatch(input_ids.to(device), position_ids.to(device), mask[:, None].to(device), source.to(device),
                        completion_ids.to(device), completion_mask.to(device))


# Rows of logits one chunk of the vocabulary-sized head works on: about 64 MiB of float32 at a time.
HEAD_CHUNK_BYTES = 64 << 20


class _HeadLogprobs(torch.autograd.Function):
    """log softmax(hidden @ weight.T / T)[target] for N positions without keeping the [N, V] logits: they
    are made a chunk of rows at a time, in the forward pass and again in the backward pass, where
    d/dlogits of the log-prob is (onehot(target) - softmax) / T. Values and gradients are those of
    token_logprobs over the full logits; peak memory is one chunk instead of N x V."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, temperature: float, rows: int):  # [N, H], [V, H], [N]
        out = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        lse = torch.empty_like(out)
        for s in range(0, hidden.shape[0], rows):
            logits = (hidden[s : s + rows] @ weight.T).float() / temperature  # [n, V]
            lse[s : s + rows] = torch.logsumexp(logits, dim=-1)
            out[s : s + rows] = logits.gather(-1, targets[s : s + rows, None]).squeeze(-1) - lse[s : s + rows]
        ctx.save_for_backward(hidden, weight, targets, lse)
        ctx.temperature, ctx.rows = temperature, rows
        device = hidden.device.type  # the backward pass repeats the forward's autocast
        ctx.amp = (device, torch.get_autocast_dtype(device), torch.is_autocast_enabled(device))
        return out

    @staticmethod
    def backward(ctx, grad):  # [N]
        hidden, weight, targets, lse = ctx.saved_tensors
        T, rows = ctx.temperature, ctx.rows
        d_hidden = torch.zeros_like(hidden) if ctx.needs_input_grad[0] else None
        d_weight = torch.zeros_like(weight, dtype=torch.float32) if ctx.needs_input_grad[1] else None
        device, dtype, enabled = ctx.amp
        with torch.autocast(device, dtype=dtype, enabled=enabled):
            for s in range(0, hidden.shape[0], rows):
                h, g = hidden[s : s + rows], grad[s : s + rows]
                logits = (h @ weight.T).float() / T  # [n, V]
                d_logits = -(logits - lse[s : s + rows, None]).exp() * g[:, None]
                d_logits.scatter_add_(-1, targets[s : s + rows, None], g[:, None])
                d_logits /= T
                if d_hidden is not None:
                    d_hidden[s : s + rows] = (d_logits.to(weight.dtype) @ weight).to(hidden.dtype)
                if d_weight is not None:
                    d_weight += (d_logits.T @ h.float())
        return d_hidden, None if d_weight is None else d_weight.to(weight.dtype), None, None, None


@contextlib.contextmanager
def _logprob_head(model, positions: torch.Tensor, targets: torch.Tensor, temperature: float):
    """While inside, the model's LM head returns log pi(targets) at `positions` of its input (flattened
    over batch and sequence) instead of logits. The head's own forward is swapped on the instance, so the
    call still goes through the model's forward (DDP and FSDP2 hooks run; parameter names are unchanged)."""
    head = getattr(model, "module", model).get_output_embeddings()
    rows = max(1, HEAD_CHUNK_BYTES // (4 * head.weight.shape[0]))

    def forward(hidden):  # [R, L, H]
        if head.bias is not None:
            raise NotImplementedError("algo.packing: an LM head with a bias; use algo.packing=false")
        picked = hidden.flatten(0, 1)[positions]  # [N, H]
        return _HeadLogprobs.apply(picked, head.weight, targets, temperature, rows)

    head.forward = forward
    try:
        yield
    finally:
        del head.forward  # back to the class's


def grouped_logprobs(model, batch: GroupedBatch, temperature: float) -> torch.Tensor:
    """Per-token log pi(completion token) for a GroupedBatch: [b, C] float32 (0 where completion_mask is 0).
    Only the positions that predict a completion token reach the LM head, a chunk of rows at a time."""
    real = batch.completion_mask > 0  # [b, C]
    with _logprob_head(model, batch.source[real], batch.completion_ids[real], temperature):
        out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids,
                    use_cache=False)
    lp = torch.zeros(batch.completion_mask.shape, dtype=torch.float32, device=batch.completion_mask.device)
    lp[real] = out.logits  # [N] log-probs, in the logits field
    return lp
