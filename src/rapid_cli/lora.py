"""LoRA adapters (`lora=default`): low-rank updates B @ A on the decoder's linear layers, trained while the base
weights stay frozen, through peft's LoRA layers injected into the Hugging Face model in place (so the learner,
the packed forward and the HF sampler use the same model object as in full fine-tuning).

The vLLM engine gets merged weights, W + (alpha / r) B @ A under the base model's names (`merged_state`), once per
round: RAPID syncs after A optimizer steps, not after each. A checkpoint holds the adapter in peft's own format
(`adapter/`: adapter_config.json naming the base model, adapter_model.safetensors), which peft's
`PeftModel.from_pretrained` loads; `rapid export` writes the merged model for tools that want plain weights.

QLoRA (`lora=qlora`): the base's linear layers are loaded in 4-bit NF4 through bitsandbytes (transformers'
BitsAndBytesConfig; its CPU backend too, so it is tested here). The policy that trains is the dequantized base plus
the adapter, so that is what the engine gets (merged, or as its base under lora.sync=adapter), what `rapid export`
writes and what `rapid eval` of the adapter runs: an adapter directory records the quantization it was trained on
(`base_quantization.json`) and is loaded onto the same 4-bit base wherever it goes.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from rapid_cli.errors import RapidError

if TYPE_CHECKING:
    from rapid_cli.config import LoraConfig

ADAPTER_DIR = "adapter"  # inside a checkpoint
PEFT_PREFIX = "base_model.model."  # peft's key prefix in adapter_model.safetensors (a PeftModel wraps the model)
ADAPTER = "default"  # peft's adapter name
QUANTIZATION_FILE = "base_quantization.json"  # in an adapter directory trained on a 4-bit base


def _peft():
    try:
        import peft
    except ImportError:
        raise RapidError("lora=default needs the peft package: pip install 'peft>=0.17' (make install includes it)"
                         ) from None
    return peft


def _inner(model):
    return getattr(model, "module", model)  # DDP


def has_adapters(model) -> bool:
    return bool(getattr(_inner(model), "peft_config", None))


def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path).expanduser() / "adapter_config.json").is_file()


def quantization_config(quantize: str, dtype: torch.dtype):
    """transformers' BitsAndBytesConfig for `lora.quantize` (None for none). NF4 with double quantization, as QLoRA
    has it; the 4-bit weights are dequantized to the model's dtype for each product (autocast lowers that to bf16
    where the plan computes in bf16)."""
    if quantize == "none":
        return None
    check_bitsandbytes(quantize)
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quantize, bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=dtype)


def check_bitsandbytes(quantize: str) -> None:
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        raise RapidError(f"lora.quantize={quantize} needs the bitsandbytes package: pip install 'bitsandbytes>=0.48' "
                         "(make install includes it), or lora.quantize=none")


def _four_bit_layers(model) -> dict:
    """{name: module} of the model's bitsandbytes 4-bit linear layers (their weight packed two to a byte)."""
    return {name: m for name, m in _inner(model).named_modules()  # the layer holding it, not peft's wrapper
            if getattr(m._parameters.get("weight"), "quant_state", None) is not None}


def keep_trainable_layout(model) -> None:
    """bitsandbytes repacks a 4-bit weight into an inference-only layout the first time it runs without grad in eval
    mode on a CPU with AVX512-BF16 (pi_old, sampling and eval do every round), and from then on computes it with a
    kernel that has no backward: the adapters' gradients would lose the path through every frozen layer, and each
    unpacking (state_dict) re-quantizes the base through a bf16 absmax. Training needs the one layout."""
    for layer in _four_bit_layers(model).values():
        layer.support_avx512bf16_for_cpu = False


def parameter_count(model) -> int:
    """Parameters as the model computes with them: a 4-bit weight counts its unpacked shape (two weights a byte)."""
    return sum(q.shape.numel() if (q := getattr(p, "quant_state", None)) is not None else p.numel()
               for p in _inner(model).parameters())


def quantization_of(model) -> str:
    """lora.quantize as the model was loaded: nf4 or none."""
    layers = _four_bit_layers(model)
    return next(iter(layers.values())).weight.quant_state.quant_type if layers else "none"


def saved_quantization(path: str | Path) -> str:
    """The base quantization the adapter directory `path` was trained on (none when it records none)."""
    file = Path(path).expanduser() / QUANTIZATION_FILE
    if not file.is_file():
        return "none"
    try:
        return json.loads(file.read_text())["quantize"]
    except (OSError, ValueError, KeyError) as err:
        raise RapidError(f"{file} cannot be read ({err}); restore it, or delete it if the adapter was trained on "
                         "an unquantized base") from None


def adapter_base(path: str | Path) -> str:
    """The base model an adapter directory was trained on (its adapter_config.json's base_model_name_or_path)."""
    try:
        base = json.loads((Path(path).expanduser() / "adapter_config.json").read_text()).get("base_model_name_or_path")
    except (OSError, json.JSONDecodeError) as err:
        raise RapidError(f"{path}/adapter_config.json cannot be read ({err}); it is not a usable adapter") from None
    if not base:
        raise RapidError(f"{path}/adapter_config.json names no base_model_name_or_path; set model.path to the base "
                         "model and load the adapter with peft")
    return base


def add_adapters(model, lora_cfg: LoraConfig | None = None, saved: str | Path | None = None):
    """Injects LoRA layers into `model` in place and freezes everything else: fresh ones from `lora_cfg` (B = 0, so
    the model is unchanged until it trains), or those of the adapter directory `saved`, weights included."""
    peft = _peft()
    if saved is not None:
        config = peft.LoraConfig.from_pretrained(str(saved))
    else:
        targets = list(lora_cfg.target_modules)
        config = peft.LoraConfig(r=lora_cfg.r, lora_alpha=lora_cfg.alpha, lora_dropout=lora_cfg.dropout, bias="none",
                                 target_modules="all-linear" if targets == ["all-linear"] else targets)
    try:
        peft.inject_adapter_in_model(config, model, adapter_name=ADAPTER)
    except ValueError:  # target_modules naming no layer of this model
        linear = sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules()
                         if isinstance(m, torch.nn.Linear)})
        asked = sorted(config.target_modules) if isinstance(config.target_modules, set) else config.target_modules
        raise RapidError(f"lora.target_modules={asked} names no layer of this model; its linear layers: "
                         f"{', '.join(linear)} (or all-linear)") from None
    # peft gives the adapters the base layer's dtype; a bf16 base (model.dtype=bfloat16) would then train bf16
    # adapters, whose small AdamW updates round away. They are the only weights that move: keep them float32,
    # before a saved adapter's float32 values are copied in.
    for name, param in model.named_parameters():
        if ".lora_" in name:
            param.data = param.data.float()
    if saved is not None:
        load_adapter(model, saved)
    return model


def load_adapter(model, path: str | Path) -> None:
    """Loads the adapter weights of directory `path` (peft's format) into `model`'s injected layers."""
    from safetensors.torch import load_file

    peft = _peft()
    file = Path(path) / "adapter_model.safetensors"
    if not file.is_file():
        raise RapidError(f"{path} has no adapter_model.safetensors; it is not a complete adapter")
    state = {k.removeprefix(PEFT_PREFIX): v for k, v in load_file(file).items()}
    result = peft.set_peft_model_state_dict(_inner(model), state, adapter_name=ADAPTER)
    missing = [k for k in result.missing_keys if ".lora_" in k]
    if result.unexpected_keys or missing:
        raise RapidError(f"the adapter in {path} does not fit this model ({len(result.unexpected_keys)} unexpected and "
                         f"{len(missing)} missing adapter weights, e.g. "
                         f"{(result.unexpected_keys or missing)[0]}); was it trained on another base model?")


def save_adapter(model, path: Path, base: str) -> None:
    """Writes `model`'s adapter into directory `path` in peft's format, naming `base` as its base model."""
    from safetensors.torch import save_file

    peft = _peft()
    inner = _inner(model)
    path.mkdir(parents=True, exist_ok=True)
    state = peft.get_peft_model_state_dict(inner, adapter_name=ADAPTER)
    save_file({PEFT_PREFIX + k: v.detach().contiguous().cpu() for k, v in state.items()},
              path / "adapter_model.safetensors", metadata={"format": "pt"})
    config = copy.copy(inner.peft_config[ADAPTER])  # the model's own stays as it is
    config.base_model_name_or_path = base
    config.save_pretrained(str(path))
    if (quantize := quantization_of(inner)) != "none":  # so that it is loaded onto the base it was trained on
        (path / QUANTIZATION_FILE).write_text(json.dumps({"quantize": quantize}) + "\n")


def merged_state(model, keep_float32: bool = False, merge: bool = True) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) of every parameter and buffer under the base model's names, each adapted weight merged
    (W + scale * B @ A in float32, stored in W's dtype, without touching the model); a model without adapters is its
    state_dict as it is. A 4-bit base weight comes dequantized (the W the trainer computes with), its quantization
    statistics left out. `keep_float32`: the merged weights stay float32, for a receiver that rounds them once to
    its own dtype (an engine: a float32 one then holds the sum exactly, where a bf16 base's dtype would drop most
    of a young adapter's small delta). `merge=False`: the base weights alone, for an engine that serves the
    adapter itself."""
    inner = _inner(model)
    state = inner.state_dict()
    four_bit = _four_bit_layers(inner)
    if not has_adapters(inner) and not four_bit:
        yield from state.items()
        return
    from peft.tuners.lora import LoraLayer

    layers = {name: m for name, m in inner.named_modules() if isinstance(m, LoraLayer)}
    for name, value in state.items():
        if ".lora_" in name:
            continue
        if name.partition(".weight.")[0] in four_bit:
            continue  # a 4-bit weight's absmax, quant_map, ...: dequantized below, not weights of the model
        owner, _, leaf = name.rpartition(".")
        if owner in four_bit and leaf == "weight":
            value = _dequantized(four_bit[owner].weight)
        base_owner = owner.removesuffix(".base_layer")
        if base_owner != owner:
            if leaf == "weight" and merge and base_owner in layers:
                with torch.no_grad():
                    # summed in float32 and rounded once: a bf16 base's merged weight is the nearest bf16
                    merged = value.float() + layers[base_owner].get_delta_weight(ADAPTER).float()
                    value = merged if keep_float32 else merged.to(value.dtype)
            name = f"{base_owner}.{leaf}"
        yield name, value.detach()


def _dequantized(weight) -> torch.Tensor:
    import bitsandbytes as bnb

    with torch.no_grad():
        return bnb.functional.dequantize_4bit(weight.data, weight.quant_state)


def trainable_summary(model) -> str:
    """'2.2M of 136.7M parameters (1.6%)' for the console."""
    train = sum(p.numel() for p in _inner(model).parameters() if p.requires_grad)
    total = parameter_count(model)
    return f"{train / 1e6:.1f}M of {total / 1e6:.1f}M parameters ({100 * train / max(total, 1):.1f}%)"

