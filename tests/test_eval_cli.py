"""The real CLI on code tasks: `rapid train task=mbpp model=tiny` and `rapid eval` on a local model directory."""

from __future__ import annotations

import json
import re

import pytest

from conftest import TINY, rapid
from test_code_tasks import MBPP_FILE, needs_mbpp


@pytest.mark.slow
@needs_mbpp
def test_train_on_mbpp_with_the_tiny_model(tmp_path):
    overrides = [o for o in TINY if not o.startswith("task=")] + [
        "task=mbpp", f"task.data_path={MBPP_FILE}", "sampler.max_tokens=24", "eval.n=2", "eval.k=[1,2]",
        f"hydra.run.dir={tmp_path}"]
    proc = rapid("train", *overrides)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    last = records[-1]
    assert last["round"] == 2 and "eval/pass@2" in last and "time/reward" in last
    assert 0.0 <= last["reward/mean"] <= 1.0


@pytest.mark.slow
@needs_mbpp
def test_rapid_eval_on_a_local_model_directory(tmp_path):
    from conftest import compose
    from rapid_cli.models import resolve_model

    model_dir = resolve_model(compose(["model=tiny"]).model)  # an ordinary HF directory on disk
    proc = rapid("eval", f"model.path={model_dir}", "task=mbpp", f"task.data_path={MBPP_FILE}", "eval.n=3",
                 "eval.limit=4", "sampler=hf", "sampler.max_tokens=16", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "pass@3" in proc.stdout
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["problems"] == 4 and report["n"] == 3 and report["temperature"] == 1.0
    assert set(report["metrics"]) >= {"eval/pass@1", "eval/pass@3", "eval/pass@1_se", "eval/pass@3_se"}
    # each pass@k with its interval over the problems, on one line in an 80-column terminal
    assert len(re.findall(r"\d\.\d{3} ± \d\.\d{3}", proc.stdout)) == 2 and "95%" in proc.stdout
    assert len(report["per_problem"]) == 4
    samples = (tmp_path / "samples.jsonl").read_text().splitlines()
    assert len(samples) == 12 and {"id", "completion", "reward"} <= set(json.loads(samples[0]))


@pytest.mark.slow
def test_eval_errors_are_one_line(tmp_path):
    proc = rapid("eval", "model=tiny", "task=mbpp", "task.source=offline", f"hydra.run.dir={tmp_path}")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2 and out.count("\n") == 1 and "task.data_path" in out
    proc = rapid("eval", "model=tiny", "task=nope")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2 and out.count("\n") == 1 and "available task options" in out and "humaneval" in out


@pytest.mark.slow
def test_rapid_eval_on_the_training_split(tmp_path):
    """`eval.split=train`: the base model's success on the problems RL would train on (what decides whether a
    group of G ever holds a correct answer to learn from), reported as such."""
    proc = rapid("eval", "model=tiny", "task=arith", "sampler=hf", "sampler.max_tokens=4", "eval.split=train",
                 "eval.limit=3", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "arith train" in proc.stdout
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["split"] == "train"
    assert [p["id"] for p in report["per_problem"]] == ["train-0", "train-1", "train-2"]
    proc = rapid("eval", "model=tiny", "task=arith", "eval.split=dev")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2 and out.count("\n") == 1 and "train" in out and "test" in out
