"""The trained model: loading, batch packing and per-token log-probabilities."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from rapid_cli.errors import RapidError
from rapid_cli.hub import hub_error, offline_unless_reachable
from rapid_cli.models import resolve_model

if TYPE_CHECKING:
    from rapid_cli.config import LoraConfig, ModelConfig

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


def load_policy(model_cfg: ModelConfig, device: torch.device, cache_dir: str | None = None,
                lora_cfg: LoraConfig | None = None, quantize: str = "none"):
    """Returns (model, tokenizer, local_or_hub_path of the full weights). With `lora_cfg.enabled`, fresh LoRA
    adapters are injected on a base quantized as `lora_cfg.quantize` says; a model.path that is an adapter
    directory loads that trained adapter onto the base its adapter_config.json names, quantized as the adapter
    was trained, and the path returned is that base's. `quantize`: a 4-bit base without adapters (a QLoRA run's
    KL anchor)."""
    from omegaconf import OmegaConf
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from rapid_cli import lora

    hf_logging.disable_progress_bar()
    path = resolve_model(model_cfg, cache_dir)
    adapter = None
    if lora_cfg is not None and lora_cfg.enabled:
        quantize = lora_cfg.quantize
    if lora.is_adapter_dir(path):  # trained further (a run that starts from it, a resume) or as it is (eval, export)
        adapter, trained_on = Path(path), lora.saved_quantization(path)
        if lora_cfg is not None and lora_cfg.enabled and quantize != trained_on:
            raise RapidError(f"model.path={path} was trained on a base quantized as {trained_on}; lora.quantize="
                             f"{quantize} would put it on another: set lora.quantize={trained_on}")
        quantize = trained_on
        model_cfg = OmegaConf.merge(model_cfg, {"path": lora.adapter_base(path)})
        path = resolve_model(model_cfg, cache_dir)
    if Path(path).is_dir():
        check_model_files(Path(path))
    else:
        offline_unless_reachable()
    dtype = DTYPES[model_cfg.dtype]
    four_bit = lora.quantization_config(quantize, dtype)
    # quantized where it will run (bitsandbytes packs a weight when it reaches its device)
    placed = {"quantization_config": four_bit, "device_map": {"": device}} if four_bit else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=model_cfg.trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=dtype, trust_remote_code=model_cfg.trust_remote_code, **placed
        )
    except (OSError, ValueError) as err:  # ValueError: transformers on files it cannot make a model or tokenizer of
        first = (str(err).strip().splitlines() or [type(err).__name__])[0].strip()
        if Path(path).is_dir():  # the hub was never involved: the local files are at fault
            raise RapidError(f"could not load the model in {path}: {first} (a model directory holds config.json, "
                             "the weights and the tokenizer's files, as save_pretrained writes them)") from None
        if isinstance(err, ValueError):
            raise RapidError(f"could not load model {model_cfg.path!r}: {first}") from None
        hub = hub_error()
        why = f"the hub is not reachable: {hub}" if hub else str(err).splitlines()[0]
        raise RapidError(
            f"could not load model {model_cfg.path!r}: not a local directory, and {why}; "
            "check the id and network, or use model.path=<local dir> or model=smollm2-135m (offline)"
        ) from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    if four_bit:
        lora.keep_trainable_layout(model)
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
        raise RapidError(f"the prompt of {where or 'a problem'} is {longest_prompt} tokens: the model's context of "
                         f"{limit} tokens leaves it no room to complete; shorten or remove it, or set {drop}")
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
    layout = _group_layout(prompts, completions, group_size, pad_id)
    return GroupedBatch(layout.input_ids.to(device), layout.position_ids.to(device),
                        _group_mask(layout.segment).to(device), layout.source.to(device),
                        layout.completion_ids.to(device), layout.completion_mask.to(device))


@dataclass
class _GroupLayout:
    """pack_groups' rows before any attention mask: `segment` [R, L] is -1 on the prompt, j on completion j
    and -2 on padding; the other fields are GroupedBatch's."""

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    segment: torch.Tensor
    source: torch.Tensor
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor


def _group_layout(prompts: list[list[int]], completions: list[list[int]], group_size: int,
                  pad_id: int) -> _GroupLayout:
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
    return _GroupLayout(input_ids, position_ids, segment, source, completion_ids, completion_mask)


def _group_mask(segment: torch.Tensor) -> torch.Tensor:
    """GroupedBatch's attention mask [R, 1, L, L] of rows whose positions belong to `segment` [R, L]."""
    L = segment.shape[1]
    causal = torch.ones((L, L), dtype=torch.bool, device=segment.device).tril()  # [query, key]
    seen = (segment[:, None, :] == -1) | (segment[:, None, :] == segment[:, :, None])  # [R, query, key]
    # A padding query attends to itself: a row with nothing to attend to would be NaN, and NaN reaches the
    # real tokens' gradients through attention's backward even where the output is never used.
    mask = (causal & seen & (segment[:, :, None] != -2)) | torch.eye(L, dtype=torch.bool, device=segment.device)
    return mask[:, None]


# Rows of logits one chunk of the vocabulary-sized head works on: about 64 MiB of float32 at a time.
HEAD_CHUNK_BYTES = 64 << 20


def _head_logits(hidden: torch.Tensor, weight: torch.Tensor, temperature: float) -> torch.Tensor:
    """float32 logits / T of a chunk of rows, a tensor of their own (the head's passes work on it in place)."""
    logits = hidden @ weight.T
    logits = logits.float() if logits.dtype != torch.float32 else logits
    return logits.div_(temperature) if temperature != 1 else logits


def _autocast_weight(weight: torch.Tensor, amp: tuple) -> torch.Tensor:
    """The head's weight as autocast would hand it to a matrix product, cast once per pass: autocast caches its
    casts of a parameter but not of a view of one (weight.T), so each chunk would cast all of it again (on
    SmolLM2-135M at the GSM8K G=8 shape, 54 casts of 28M values per optimizer step)."""
    _, dtype, enabled = amp
    return weight.to(dtype) if enabled and weight.dtype == torch.float32 else weight


class _HeadLogprobs(torch.autograd.Function):
    """log softmax(hidden @ weight.T / T)[target] for N positions without keeping the [N, V] logits: they
    are made a chunk of rows at a time, in the forward pass and again in the backward pass, where
    d/dlogits of the log-prob is (onehot(target) - softmax) / T. Values and gradients are those of
    token_logprobs over the full logits; peak memory is one chunk instead of N x V."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, temperature: float, rows: int):  # [N, H], [V, H], [N]
        out = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        lse = torch.empty_like(out)
        device = hidden.device.type  # the backward pass repeats the forward's autocast
        ctx.amp = (device, torch.get_autocast_dtype(device), torch.is_autocast_enabled(device))
        w = _autocast_weight(weight, ctx.amp)
        for s in range(0, hidden.shape[0], rows):
            logits = _head_logits(hidden[s : s + rows], w, temperature)  # [n, V]
            picked = logits.gather(-1, targets[s : s + rows, None]).squeeze(-1)
            top = logits.amax(-1)
            # the log-sum-exp in place: a chunk is 64 MiB, and every new one costs its pages' faults
            lse[s : s + rows] = logits.sub_(top[:, None]).exp_().sum(-1).log_() + top
            out[s : s + rows] = picked - lse[s : s + rows]
        ctx.save_for_backward(hidden, weight, targets, lse)
        ctx.temperature, ctx.rows = temperature, rows
        return out

    @staticmethod
    def backward(ctx, grad):  # [N]
        hidden, weight, targets, lse = ctx.saved_tensors
        T, rows = ctx.temperature, ctx.rows
        d_hidden = torch.zeros_like(hidden) if ctx.needs_input_grad[0] else None
        d_weight = torch.zeros_like(weight, dtype=torch.float32) if ctx.needs_input_grad[1] else None
        device, dtype, enabled = ctx.amp
        w = _autocast_weight(weight, ctx.amp)
        with torch.autocast(device, dtype=dtype, enabled=enabled):
            for s in range(0, hidden.shape[0], rows):
                h, g = hidden[s : s + rows], grad[s : s + rows, None] / T
                logits = _head_logits(h, w, T)  # [n, V]
                d_logits = logits.sub_(lse[s : s + rows, None]).exp_().mul_(-g)  # in place, as in forward
                d_logits.scatter_add_(-1, targets[s : s + rows, None], g)
                low = d_logits.to(w.dtype)  # cast once for both products (autocast would cast it for each)
                if d_hidden is not None:
                    d_hidden[s : s + rows] = (low @ w).to(hidden.dtype)
                if d_weight is not None:
                    d_weight += (low.T @ h.to(w.dtype)) if enabled else (d_logits.T @ h.float())
        return d_hidden, None if d_weight is None else d_weight.to(weight.dtype), None, None, None


def check_packable_head(model) -> None:
    """algo.packing's log-probs take the LM head's weight directly (`_logprob_head`): an adapter on the head would
    be bypassed (no gradient for it, and the trainer's pi would not be the sampler's). Refused in one line."""
    head = model.get_output_embeddings()
    if hasattr(head, "base_layer"):  # a peft LoRA layer wraps the head
        name = next((n for n, m in model.named_modules() if m is head), "the output embeddings")
        raise RapidError(f"lora.target_modules adapts the LM head ({name.rsplit('.', 1)[-1]}), which algo.packing "
                         "computes without its adapter; set algo.packing=false, or leave the head out of "
                         "lora.target_modules")


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


# Completion tokens whose queries one attention call takes (algo.packing's segmented attention): each chunk of a
# completion attends to its prompt and to its own completion up to the chunk's end, so the masked-out work is
# within one chunk. On SmolLM2-135M at the GSM8K G=8 shape (scripts/bench_attention.py, fp32 CPU) 32 is slower
# than the dense mask (more, smaller calls), 64 and 128 are 1.2-1.5x faster, neither clearly ahead.
SEGMENT_CHUNK = 64
SEGMENT_ATTENTION = "rapid_segments"  # the name under which transformers' AttentionInterface knows it


@dataclass
class _Bucket:
    """One attention call of a SegmentPlan: `rows` query rows of `width` queries each, over `keys` keys.
    q_index [rows * width]: the packed position (of R*L) of each query slot, R*L on padding; q_take the same
    with 0 on padding, and k_take [rows * keys] each key slot's position, 0 on padding (a padding slot may
    gather any row: its key is masked, its query's output unused, and the gradients of both are exactly 0);
    allowed [rows, width, keys] bool."""

    q_index: torch.Tensor
    k_take: torch.Tensor
    allowed: torch.Tensor
    rows: int
    width: int
    keys: int
    q_take: torch.Tensor | None = None


@dataclass
class SegmentPlan:
    """Which (query, key) pairs of a GroupedBatch's rows are computed, as a few dense attention calls
    (buckets) over gathered queries and keys: first every prompt (its queries over its own keys, causal),
    then the completions, longest first, a chunk of `chunk` queries at a time: chunk k of each completion
    longer than k*chunk tokens over its prompt's keys and its own first (k+1)*chunk keys. Every real query
    is computed once; what a bucket still masks is padding and the causal triangle inside a chunk.

    out_index [R*L]: for each packed position, the row of the buckets' stacked outputs that is its
    attention output (the last row, zeros, for padding)."""

    buckets: list[_Bucket]
    out_index: torch.Tensor
    positions: int  # R*L
    head_dim: int = 0  # set by the attention call
    masks: dict | None = None  # dtype -> the buckets' additive masks [rows, 1, width, keys], made on first use

    def additive_masks(self, dtype: torch.dtype) -> list[torch.Tensor]:
        if self.masks is None:
            self.masks = {}
        if dtype not in self.masks:
            low = torch.finfo(dtype).min
            self.masks[dtype] = [torch.zeros(b.allowed.shape, dtype=dtype, device=b.allowed.device)
                                 .masked_fill_(~b.allowed, low)[:, None] for b in self.buckets]
        return self.masks[dtype]

    def pairs(self) -> int:
        """(query, key) pairs the buckets compute, padding included."""
        return sum(b.rows * b.width * b.keys for b in self.buckets)


def segment_plan(segment: torch.Tensor, chunk: int = SEGMENT_CHUNK) -> SegmentPlan:
    """The SegmentPlan of packed rows whose positions belong to `segment` [R, L] (-1: the prompt, at the
    start of the row; j: completion j; -2: padding), on `segment`'s device."""
    R, L = segment.shape
    device = segment.device
    none = R * L
    seg = segment.cpu()
    prompt_lens = (seg == -1).sum(1)  # [R]
    Pm = int(prompt_lens.max())
    ar = torch.arange(Pm)
    # the prompt bucket: each row's first Pm positions, those past its own prompt masked and unused
    own = ar[None, :] < prompt_lens[:, None]  # [R, Pm]
    q = torch.where(own, torch.arange(R)[:, None] * L + ar, none)
    buckets = [_Bucket(q.flatten(), q.flatten(), (ar[None, :] <= ar[:, None])[None] & own[:, None, :], R, Pm, Pm)]
    # the completions: (length, first position in the flattened rows, prompt length, row start), longest first
    pieces = []
    for r in range(R):
        s = seg[r]
        change = torch.nonzero(s[1:] != s[:-1]).squeeze(1) + 1
        starts = torch.cat([torch.tensor([0]), change]).tolist()
        ends = [*change.tolist(), L]
        pieces += [(e - b, r * L + b, int(prompt_lens[r]), r * L)
                   for b, e in zip(starts, ends, strict=True) if s[b] >= 0]
    pieces.sort(key=lambda p: -p[0])
    if pieces:
        lens, first, plen, base = (torch.tensor(col) for col in zip(*pieces, strict=True))
        for q0 in range(0, int(lens[0]), chunk):
            n = int((lens > q0).sum())  # the completions this chunk reaches: a prefix, longest first
            q1 = min(q0 + chunk, int(lens[0]))
            t = torch.arange(q0, q1)  # the chunk's query offsets in its completion
            kc = torch.arange(q1)  # the completion keys it may see
            ln, fs, pl, bs = lens[:n, None], first[:n, None], plen[:n, None], base[:n, None]
            q = torch.where(t < ln, fs + t, none)  # [n, width]
            k = torch.cat([torch.where(ar < pl, bs + ar, none), torch.where(kc < ln, fs + kc, none)], 1)
            allowed = torch.cat([(ar < pl)[:, None, :].expand(n, q1 - q0, Pm),
                                 (kc[None, None, :] <= t[None, :, None]) & (kc < ln)[:, None, :]], 2)
            buckets.append(_Bucket(q.flatten(), k.flatten(), allowed, n, q1 - q0, Pm + q1))
    slots = torch.cat([b.q_index for b in buckets])
    real = slots < none
    out_index = torch.full((none,), len(slots), dtype=torch.long)
    out_index[slots[real]] = torch.nonzero(real).squeeze(1)
    for b in buckets:
        b.q_take, b.k_take = (torch.where(i < none, i, 0).to(device) for i in (b.q_index, b.k_take))
        b.q_index, b.allowed = b.q_index.to(device), b.allowed.to(device)
    return SegmentPlan(buckets, out_index.to(device), none)


def _flat_rows(x: torch.Tensor) -> torch.Tensor:
    """[R, H, L, d] -> [R*L, H*d], one row per position (a view of transformers' q, k, v, which are transposed
    [R, L, H, d] tensors)."""
    R, H, L, d = x.shape
    return x.transpose(1, 2).reshape(R * L, H * d)


def _bucket_attention(plan: SegmentPlan, q, k, v, scale: float, grad: bool):
    """Each bucket's attention over the gathered q, k, v ([R*L, heads*d] each): (outputs [rows*width,
    heads*d] per bucket, and with `grad` the (q, k, v, out) of each call, whose graphs the backward pass
    differentiates)."""
    h, kv = q.shape[1] // plan.head_dim, k.shape[1] // plan.head_dim
    d = plan.head_dim
    outs, saved = [], []
    gqa = h != kv and q.device.type == "cpu"  # the CPU flash kernel takes grouped heads and a mask as they are
    for b, mask in zip(plan.buckets, plan.additive_masks(q.dtype), strict=True):
        qb = q.index_select(0, b.q_take).view(b.rows, b.width, h, d).transpose(1, 2)
        kb = k.index_select(0, b.k_take).view(b.rows, b.keys, kv, d).transpose(1, 2)
        vb = v.index_select(0, b.k_take).view(b.rows, b.keys, kv, d).transpose(1, 2)
        if grad:
            qb, kb, vb = (x.detach().requires_grad_() for x in (qb, kb, vb))
        with torch.enable_grad() if grad else contextlib.nullcontext():
            kx, vx = (kb, vb) if gqa or h == kv else (x.repeat_interleave(h // kv, 1) for x in (kb, vb))
            with torch.autocast(q.device.type, enabled=False):
                o = torch.nn.functional.scaled_dot_product_attention(qb, kx, vx, attn_mask=mask, scale=scale,
                                                                     enable_gqa=gqa)
        if grad:
            saved.append((qb, kb, vb, o))
        outs.append(o.detach().transpose(1, 2).reshape(b.rows * b.width, h * d))
    return outs, saved


def _stack_outputs(plan: SegmentPlan, outs: list[torch.Tensor], R: int, L: int, h: int) -> torch.Tensor:
    outs.append(outs[0].new_zeros(1, outs[0].shape[1]))
    return torch.cat(outs).index_select(0, plan.out_index).view(R, L, h, plan.head_dim)


class _SegmentAttention(torch.autograd.Function):
    """Attention over a SegmentPlan's buckets: q [R, heads, L, d], k and v [R, kv_heads, L, d] -> [R, L,
    heads, d]. Each bucket is one scaled_dot_product_attention call on gathered rows; its graph is kept
    from the forward pass and differentiated in the backward one, whose gradients are added back into
    the positions they came from (index_add_ over [positions, heads*d] rows: a key feeds several buckets)."""

    @staticmethod
    def forward(ctx, q, k, v, plan: SegmentPlan, scale: float):
        R, h, L, _ = q.shape
        outs, saved = _bucket_attention(plan, _flat_rows(q), _flat_rows(k), _flat_rows(v), scale, grad=True)
        ctx.plan, ctx.saved, ctx.shape = plan, saved, (R, h, L, k.shape[1])
        return _stack_outputs(plan, outs, R, L, h)

    @staticmethod
    def backward(ctx, grad):  # [R, L, heads, d]
        plan, (R, h, L, kv) = ctx.plan, ctx.shape
        d = plan.head_dim
        g = torch.cat([grad.reshape(R * L, h * d), grad.new_zeros(1, h * d)])  # a padding query's: 0
        dq = grad.new_zeros(R * L, h * d)
        dk, dv = grad.new_zeros(R * L, kv * d), grad.new_zeros(R * L, kv * d)
        for b, (qb, kb, vb, o) in zip(plan.buckets, ctx.saved, strict=True):
            gb = g.index_select(0, b.q_index).view(b.rows, b.width, h, d).transpose(1, 2).to(o.dtype)
            gq, gk, gv = torch.autograd.grad(o, (qb, kb, vb), gb)
            dq.index_add_(0, b.q_take, gq.transpose(1, 2).reshape(-1, h * d).to(dq.dtype))
            dk.index_add_(0, b.k_take, gk.transpose(1, 2).reshape(-1, kv * d).to(dk.dtype))
            dv.index_add_(0, b.k_take, gv.transpose(1, 2).reshape(-1, kv * d).to(dv.dtype))
        ctx.saved = None
        back = [x.view(R, L, -1, d).transpose(1, 2) for x in (dq, dk, dv)]
        return *back, None, None


def _segment_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                       segments: SegmentPlan | None = None, **kwargs):
    """transformers' attention interface (registered as SEGMENT_ATTENTION): the attention of a
    SegmentedBatch's rows, `segments` their plan (passed to the model's forward as a keyword)."""
    if segments is None:
        raise RuntimeError(f"attention {SEGMENT_ATTENTION!r} needs the rows' SegmentPlan (segments=...)")
    extra = [name for name in ("sliding_window", "softcap", "s_aux", "position_bias") if kwargs.get(name) is not None]
    if dropout or extra or not getattr(module, "is_causal", True):
        raise RapidError(f"algo.packed_attention=segments: this model's attention has "
                         f"{extra or 'dropout or no causal mask'}, which the segments do not compute; set "
                         "algo.packed_attention=dense")
    segments.head_dim = query.shape[-1]
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    key, value = key.to(query.dtype), value.to(query.dtype)
    if torch.is_grad_enabled() and (query.requires_grad or key.requires_grad or value.requires_grad):
        return _SegmentAttention.apply(query, key, value, segments, scale), None
    R, h, L, _ = query.shape
    outs, _ = _bucket_attention(segments, _flat_rows(query), _flat_rows(key), _flat_rows(value), scale, grad=False)
    return _stack_outputs(segments, outs, R, L, h), None


@contextlib.contextmanager
def _attention_implementation(model, name: str):
    """While inside, every config of `model`'s modules names attention `name` (transformers looks it up at
    each call); the previous names are restored on the way out."""
    from transformers import AttentionInterface, PreTrainedConfig

    if name not in AttentionInterface._global_mapping:
        AttentionInterface.register(name, _segment_attention)
    configs = {id(c): c for m in model.modules() if isinstance(c := getattr(m, "config", None), PreTrainedConfig)}
    before = {key: c._attn_implementation_internal for key, c in configs.items()}
    for c in configs.values():
        c._attn_implementation_internal = name
    try:
        yield
    finally:
        for key, c in configs.items():
            c._attn_implementation_internal = before[key]


@dataclass
class SegmentedBatch:
    """A GroupedBatch's rows (prompt once, then its G completions back to back) whose attention computes
    only the (query, key) pairs the mask lets through, a bucket at a time (SegmentPlan), instead of every
    pair under a dense [R, 1, L, L] mask: per-token log-probs and gradients are the dense packed path's
    (and the padded one's) up to float rounding. `segment` [R, L] as in _GroupLayout."""

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    segment: torch.Tensor
    source: torch.Tensor
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor
    plan: SegmentPlan

    def grouped(self) -> GroupedBatch:
        """The same rows with the dense mask (grouped_logprobs)."""
        return GroupedBatch(self.input_ids, self.position_ids, _group_mask(self.segment), self.source,
                            self.completion_ids, self.completion_mask)


def pack_segments(prompts: list[list[int]], completions: list[list[int]], group_size: int, pad_id: int, device,
                  chunk: int | None = None) -> SegmentedBatch:
    """pack_groups' rows with a SegmentPlan instead of the dense mask. `prompts`: one per group;
    `completions`: G per group, group by group; `chunk`: SEGMENT_CHUNK by default."""
    layout = _group_layout(prompts, completions, group_size, pad_id)
    plan = segment_plan(layout.segment.to(device), chunk or SEGMENT_CHUNK)
    return SegmentedBatch(layout.input_ids.to(device), layout.position_ids.to(device), layout.segment.to(device),
                          layout.source.to(device), layout.completion_ids.to(device),
                          layout.completion_mask.to(device), plan)


def _checkpointing(model) -> bool:
    return model.training and checkpointing_enabled(model)


def checkpointing_enabled(model) -> bool:
    """Whether any module of `model` recomputes its forward in the backward pass (gradient checkpointing)."""
    return any(getattr(m, "gradient_checkpointing", False) for m in model.modules())


def packed_attention(setting: str, model) -> str:
    """algo.packed_attention resolved for `model`: `auto` is the segmented attention unless the model
    checkpoints gradients (its layers' recomputation runs outside the call that switches the attention)."""
    if setting == "auto":
        return "dense" if checkpointing_enabled(model) else "segments"
    return setting


def segmented_logprobs(model, batch: SegmentedBatch, temperature: float) -> torch.Tensor:
    """grouped_logprobs for a SegmentedBatch: [b, C] float32 (0 where completion_mask is 0). The model is
    called through its forward (DDP and FSDP2 hooks run) with its attention switched to the segmented one
    for the call. Under gradient checkpointing the layers recompute their forward in the backward pass,
    after the switch is undone: there this takes the dense mask (grouped_logprobs) instead."""
    if torch.is_grad_enabled() and _checkpointing(model):
        return grouped_logprobs(model, batch.grouped(), temperature)
    real = batch.completion_mask > 0  # [b, C]
    with (_logprob_head(model, batch.source[real], batch.completion_ids[real], temperature),
          _attention_implementation(getattr(model, "module", model), SEGMENT_ATTENTION)):
        out = model(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False,
                    segments=batch.plan)
    lp = torch.zeros(batch.completion_mask.shape, dtype=torch.float32, device=batch.completion_mask.device)
    lp[real] = out.logits  # [N] log-probs, in the logits field
    return lp


# algo.packed_attention (resolved) -> how the Learner packs a micro-batch's groups and takes their log-probs
PACKED = {"dense": (pack_groups, grouped_logprobs), "segments": (pack_segments, segmented_logprobs)}
