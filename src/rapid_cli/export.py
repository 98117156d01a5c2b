"""`rapid export`: a checkpoint's policy as a plain Hugging Face model, for tools that want plain weights (a LoRA
adapter merged into its base)."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from omegaconf import OmegaConf

from rapid_cli.checkpoint import checkpoints, untied, verify
from rapid_cli.config import compose_config
from rapid_cli.errors import RapidError
from rapid_cli.lora import ADAPTER_DIR, adapter_base, is_adapter_dir, merged_state, quantization_of
from rapid_cli.policy import load_policy


def export(source: Path, out: Path) -> str:
    """`rapid export`: writes the policy of `source` (a run directory's newest checkpoint, a checkpoint, or an adapter
    directory) into `out` as a plain Hugging Face model, LoRA merged, loadable by transformers and vLLM without
    peft. A full fine-tuning checkpoint's model is copied as it is. Returns a line saying what was written."""
    source = Path(source).expanduser()
    if not source.exists():
        raise RapidError(f"{source} does not exist; give a run directory, a checkpoint (round-NNNNNN) or an adapter")
    if out.exists() and any(out.iterdir()):
        raise RapidError(f"{out} is not empty; give a new directory to export into")
    runs = checkpoints(source / "checkpoints")
    ckpt = runs[-1] if runs else source
    if (ckpt / "manifest.json").exists():
        verify(ckpt)
    adapter = ckpt / ADAPTER_DIR if is_adapter_dir(ckpt / ADAPTER_DIR) else ckpt if is_adapter_dir(ckpt) else None
    if adapter is None:
        model_dir = ckpt / "model" if (ckpt / "model" / "config.json").is_file() else ckpt
        if not (model_dir / "config.json").is_file():
            raise RapidError(f"{source} holds neither an adapter (adapter_config.json) nor a model (config.json)")
        shutil.copytree(model_dir, out, dirs_exist_ok=True)
        return f"copied the full fine-tuned model of {model_dir} to {out}"
    saved = adapter.parent / "config.yaml"  # the training run's model section: the base exactly as it was built
    model_cfg = OmegaConf.load(saved).model if saved.is_file() else compose_config([]).model
    model_cfg = OmegaConf.merge(model_cfg, {"path": str(adapter)})
    model, tokenizer, _ = load_policy(model_cfg, torch.device("cpu"))
    weights, quantized = dict(merged_state(model)), quantization_of(model)
    if quantized != "none":  # plain weights need a plain model to be saved as one (no quantization_config)
        del model
        model = load_policy(OmegaConf.merge(model_cfg, {"path": adapter_base(adapter)}), torch.device("cpu"))[0]
        model.load_state_dict(weights)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True, state_dict=untied(model, weights))
    tokenizer.save_pretrained(out)
    base = adapter_base(adapter) + (f", its {quantized} 4-bit weights dequantized" if quantized != "none" else "")
    return f"merged the adapter of {adapter} into its base ({base}) and wrote {out}"
