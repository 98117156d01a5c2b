"""LoRA adapters (`lora=default`): low-rank updates B @ A on the decoder's linear layers, trained while the base
weights stay frozen, through peft's LoRA layers injected into the Hugging Face model in place (so the learner,
the packed forward and the HF sampler use the same model object as in full fine-tuning).

The vLLM engine gets merged weights, W + (alpha / r) B @ A under the base model's names (`merged_state`), once per
round: RAPID syncs after A optimizer steps, not after each. A checkpoint holds the adapter in peft's own format
(`adapter/`: adapter_config.json naming the base model, adapter_model.safetensors), which peft's
`PeftModel.from_pretrained` loads; `rapid export` writes the merged model for tools that want plain weights.
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


def merged_state(model, keep_float32: bool = False) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) of every parameter and buffer under the base model's names, each adapted weight merged
    (W + scale * B @ A in float32, stored in W's dtype, without touching the model); a model without adapters is its
    state_dict as it is. `keep_float32`: the merged weights stay float32, for a receiver that rounds them once to
    its own dtype (an engine: a float32 one then holds the sum exactly, where a bf16 base's dtype would drop most
    of a young adapter's small delta)."""
    inner = _inner(model)
    state = inner.state_dict()
    if not has_adapters(inner):
        yield from state.items()
        return
    from peft.tuners.lora import LoraLayer

    layers = {name: m for name, m in inner.named_modules() if isinstance(m, LoraLayer)}
    for name, value in state.items():
        if ".lora_" in name:
            continue
        owner, cut, leaf = name.partition(".base_layer.")
        if cut:
            if leaf == "weight" and owner in layers:
                with torch.no_grad():
                    # summed in float32 and rounded once: a bf16 base's merged weight is the nearest bf16
                    merged = value.float() + layers[owner].get_delta_weight(ADAPTER).float()
                    value = merged if keep_float32 else merged.to(value.dtype)
            name = f"{owner}.{leaf}"
        yield name, value.detach()


def trainable_summary(model) -> str:
    """'2.2M of 136.7M parameters (1.6%)' for the console."""
    params = list(_inner(model).parameters())
    train = sum(p.numel() for p in params if p.requires_grad)
    total = sum(p.numel() for p in params)
    return f"{train / 1e6:.1f}M of {total / 1e6:.1f}M parameters ({100 * train / max(total, 1):.1f}%)"

