"""Checkpoints: the policy in Hugging Face format plus everything needed to continue a run exactly.

    <run_dir>/checkpoints/round-000004/
        model/              safetensors + config + tokenizer: `from_pretrained`, vLLM and `rapid eval` load it
        trainer_state.pt    optimizer, LR scheduler, RNG states, round, data cursor, cumulative counters
        config.yaml         the composed config of the run
        manifest.json       written last: every file's size and sha256

A checkpoint is built in a hidden temporary directory next to the others, every file is fsynced, the
manifest goes in last, and only then is the directory renamed to `round-N` (an atomic rename). A crash
or a full disk mid-save leaves at most a temporary directory, which is never read and is removed by the
next save; older checkpoints are pruned only after the new one is in place. On load the manifest is
checked, so a truncated or altered file is detected and named.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from rapid_cli.errors import RapidError
from rapid_cli.lora import ADAPTER_DIR, adapter_base, has_adapters, is_adapter_dir, save_adapter

if TYPE_CHECKING:
    from rapid_cli.config import Config

_NAME = re.compile(r"^round-(\d{6})$")
# Keys whose change makes a checkpoint a different experiment: resuming across them is refused.
FIXED_GROUPS = ("model", "task", "lora")


def rng_state() -> dict:
    """This process's generators: Python's, torch's CPU one, and the one of the CUDA device it trains on
    (a rank uses one device; saving every visible GPU's state made resuming with fewer GPUs fail)."""
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda_device"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if not torch.cuda.is_available():
        return
    if "cuda_device" in state:
        torch.cuda.set_rng_state(state["cuda_device"])
    elif state.get("cuda"):  # a checkpoint from before: one state per GPU visible then; ours is the current one
        saved = state["cuda"]
        torch.cuda.set_rng_state(saved[min(torch.cuda.current_device(), len(saved) - 1)])


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*")):
        if path.is_file():
            with path.open("rb") as f:
                os.fsync(f.fileno())
    for d in [root, *[p for p in root.rglob("*") if p.is_dir()]]:
        fd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def checkpoints(root: Path) -> list[Path]:
    """Published checkpoints under `root`, oldest first (temporary directories are not listed)."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and _NAME.match(p.name))


def untied(model, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`weights` without the tied copies (the LM head of a model that ties it to the embeddings): gathered or
    merged tensors no longer share storage, so save_pretrained would see them as two weights."""
    if not getattr(model.config, "tie_word_embeddings", False):
        return weights
    tied = getattr(model, "_tied_weights_keys", None) or {}
    return {k: v for k, v in weights.items() if k not in tied}


def save(root: Path, rnd: int, model, tokenizer, state: dict, cfg: Config, keep: int | None,
         weights: dict[str, torch.Tensor] | None = None) -> Path:
    """Writes checkpoint `round-<rnd>` atomically and prunes to the newest `keep`; returns its path.
    `state`: the trainer state (resume.TrainerState.to_dict()). `weights`: the full state dict when
    `model`'s own is sharded (FSDP)."""
    from omegaconf import OmegaConf

    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".tmp-round-*"):  # left by a crash during an earlier save
        shutil.rmtree(stale, ignore_errors=True)
    target = root / f"round-{rnd:06d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-", dir=root))
    try:
        if weights is not None:
            weights = untied(model, weights)
        if has_adapters(model):  # the adapter alone, in peft's format; `rapid export` merges it
            # the base model itself, also for a run that started from an adapter (model.path=<its directory>)
            base = adapter_base(cfg.model.path) if is_adapter_dir(cfg.model.path) else cfg.model.path
            save_adapter(model, tmp / ADAPTER_DIR, base=base)
            tokenizer.save_pretrained(tmp / ADAPTER_DIR)
        else:
            model.save_pretrained(tmp / "model", safe_serialization=True, state_dict=weights)
            tokenizer.save_pretrained(tmp / "model")
        torch.save(state, tmp / "trainer_state.pt")
        (tmp / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
        files = {str(p.relative_to(tmp)): {"bytes": p.stat().st_size, "sha256": _sha256(p)}
                 for p in sorted(tmp.rglob("*")) if p.is_file()}
        (tmp / "manifest.json").write_text(json.dumps({"round": rnd, "files": files}, indent=1))
        _fsync_tree(tmp)
        if target.exists():  # re-saving the same round (a resumed run): replace it
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if not isinstance(err, Exception):  # KeyboardInterrupt, SystemExit: cleaned up, then on their way
            raise
        previous = checkpoints(root)
        kept = f"the previous checkpoint {previous[-1]} is intact" if previous else "no earlier checkpoint exists"
        why = getattr(err, "strerror", None) or (str(err).splitlines() or [type(err).__name__])[0]
        raise RapidError(f"could not save the round-{rnd} checkpoint ({why}); {kept}") from None
    if keep:
        for old in checkpoints(root)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return target


def verify(path: Path) -> dict:
    """Checks a checkpoint against its manifest; returns the manifest or raises naming the problem."""
    manifest_path = path / "manifest.json"
    if not manifest_path.exists():
        raise RapidError(f"checkpoint {path} is incomplete (no manifest.json): it was not fully written")
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError:
        raise RapidError(f"checkpoint {path} is corrupt: manifest.json is not valid JSON") from None
    for name, meta in manifest["files"].items():
        f = path / name
        if not f.exists():
            raise RapidError(f"checkpoint {path} is corrupt: {name} is missing")
        if f.stat().st_size != meta["bytes"] or _sha256(f) != meta["sha256"]:
            raise RapidError(f"checkpoint {path} is corrupt: {name} does not match its recorded size/checksum")
    return manifest


def find(resume: str, ckpt_root: Path) -> Path | None:
    """The checkpoint `train.resume` names: `auto` = the newest intact one under `ckpt_root` (None when
    there is none: a fresh start), else a checkpoint directory or a run directory holding checkpoints."""
    if resume == "auto":
        found = checkpoints(ckpt_root)
        for path in reversed(found):
            try:
                verify(path)
                return path
            except RapidError as err:
                from rapid_cli.console import warn

                warn(f"{err}; trying the one before it")
        if found:
            # not "without train.resume": a run directory that holds a run refuses a fresh start
            raise RapidError(f"no intact checkpoint in {ckpt_root} (each is damaged, above); to start afresh, give "
                             "another hydra.run.dir (this one keeps the damaged run as it is)")
        return None
    path = Path(resume).expanduser()
    if not path.exists():
        raise RapidError(f"train.resume={resume}: no such checkpoint or run directory")
    if not (path / "manifest.json").exists() and not (path / "trainer_state.pt").exists():
        inner = checkpoints(path / "checkpoints") or checkpoints(path)
        if not inner:
            raise RapidError(f"train.resume={resume}: no checkpoints in it (expected round-NNNNNN directories)")
        path = inner[-1]
    verify(path)
    return path


def config_conflicts(path: Path, cfg: Config) -> list[str]:
    """Keys of the model, task and lora groups whose values differ between the checkpoint's config and `cfg`
    (lora.sync and lora.lr_scale aside: how the engine receives the same policy, and the learning rate, which may
    change on resuming as optimizer.lr may)."""
    from omegaconf import OmegaConf

    saved = OmegaConf.to_container(OmegaConf.load(path / "config.yaml"), resolve=False)
    now = OmegaConf.to_container(cfg, resolve=False, enum_to_str=True)  # as the saved YAML has them
    diffs = []
    for group in FIXED_GROUPS:
        if group == "lora" and group not in saved and not now.get(group, {}).get("enabled"):
            continue  # a checkpoint from before LoRA existed: full fine-tuning, as now
        a, b = saved.get(group, {}), now.get(group, {})
        if group == "lora" and a:
            a = {"quantize": "none", **a}  # a checkpoint from before QLoRA existed: an unquantized base
        keys = set(a) | set(b)
        if group == "lora":  # the adapter's shape matters only where there is an adapter
            keys = keys - {"sync", "lr_scale"} if a.get("enabled") and b.get("enabled") else {"enabled"}
        for key in sorted(keys):
            if a.get(key) != b.get(key):
                diffs.append(f"{group}.{key}: {a.get(key)!r} -> {b.get(key)!r}")
    return diffs


def identity(path: Path | None) -> str | None:
    """A checkpoint's path and the hash of its manifest (which holds every file's sha256): equal on two ranks
    only when both see the same checkpoint with the same contents."""
    if path is None:
        return None
    return f"{path.resolve()} (manifest sha256 {_sha256(path / 'manifest.json')[:12]})"


def load_state(path: Path) -> dict:
    return torch.load(path / "trainer_state.pt", map_location="cpu", weights_only=True)
