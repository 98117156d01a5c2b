"""Checkpoints and resume: a run killed with SIGKILL mid-round and resumed ends exactly like an
uninterrupted one; Ctrl-C saves and says how to resume; damaged checkpoints and failed saves are
detected and never cost the previous checkpoint."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import time

import pytest
import torch
from safetensors.torch import load_file

from conftest import RAPID, REPO, TINY, compose
from rapid_cli import checkpoint
from rapid_cli.config import RapidError
from rapid_cli.trainer import train


def learnable_data(tmp_path) -> str:
    """GSM8K-format problems whose answer (90) the random tiny model sometimes writes, so rewards are
    not all zero and the update really moves the weights."""
    path = tmp_path / "nineties.jsonl"
    path.write_text("".join(json.dumps({"question": f"What is {a} + {90 - a}?", "answer": "#### 90"}) + "\n" for a in range(40)))
    return str(path)


def overrides(tmp_path, rounds: int = 5) -> list[str]:
    keep = [o for o in TINY if not o.startswith(("task=", "train.rounds", "algo.group_size", "algo.micro_batch_size",
                                                  "sampler.max_tokens"))]
    return keep + ["task=gsm8k", f"task.data_path={learnable_data(tmp_path)}", "algo.group_size=4",
                   "algo.micro_batch_size=4", "sampler.max_tokens=16", f"train.rounds={rounds}", "train.save_every=1",
                   "train.keep_checkpoints=0", "optimizer.lr=1e-3", "eval.every=2"]


def cli(*args, **kw):
    env = {**os.environ, "WANDB_MODE": "disabled"}
    return subprocess.Popen([RAPID, "train", *args], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, **kw)


def records(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def comparable(rows: list[dict]) -> list[dict]:
    """Everything but wall-clock measurements, which differ between any two runs."""
    return [{k: v for k, v in r.items() if not k.startswith("time/") and k != "perf/gen_tokens_per_s"} for r in rows]


def wait_for(path, proc, timeout=300):
    start = time.time()
    while not path.exists():
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() - start < timeout
        time.sleep(0.01)


@pytest.mark.slow
def test_sigkill_mid_round_then_resume_equals_an_uninterrupted_run(tmp_path):
    args = overrides(tmp_path, rounds=6)
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    proc = cli(*args, f"hydra.run.dir={whole}")
    assert proc.wait(600) == 0, proc.stdout.read()

    proc = cli(*args, f"hydra.run.dir={killed}")
    wait_for(killed / "checkpoints" / "round-000002" / "manifest.json", proc)
    time.sleep(0.05)  # into round 3
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL  # it really died before finishing
    assert not (killed / "checkpoints" / "round-000006").exists()

    resumed = cli(*args, f"hydra.run.dir={killed}", "train.resume=auto")
    out = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0, out
    assert "resuming from" in out

    a, b = records(whole), records(killed)
    assert [r["round"] for r in b] == list(range(7))  # no round twice, none missing
    assert comparable(a) == comparable(b)
    assert sum(r.get("reward/mean", 0) for r in a) > 0  # the comparison covered real learning
    wa = load_file(whole / "checkpoints" / "round-000006" / "model" / "model.safetensors")
    wb = load_file(killed / "checkpoints" / "round-000006" / "model" / "model.safetensors")
    w0 = load_file(whole / "checkpoints" / "round-000001" / "model" / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert any(not torch.equal(wa[k], w0[k]) for k in wa)


@pytest.mark.slow
def test_ctrl_c_finishes_the_round_saves_and_prints_how_to_resume(tmp_path):
    args = overrides(tmp_path, rounds=40)
    run_dir = tmp_path / "run"
    proc = cli(*args, f"hydra.run.dir={run_dir}", "train.save_every=0")
    wait_for(run_dir / "metrics.jsonl", proc)
    while len(records(run_dir)) < 2:  # the at-start eval and round 1 are logged
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 130, out
    stopped = records(run_dir)[-1]["round"]
    assert 1 <= stopped < 40
    assert (run_dir / "checkpoints" / f"round-{stopped:06d}" / "manifest.json").exists()
    assert f"hydra.run.dir={run_dir} train.resume=auto" in out.replace("\n", " ")


def test_checkpoint_loads_in_transformers_and_prunes(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = compose(overrides(tmp_path, rounds=3) + ["train.keep_checkpoints=2"])
    train(cfg, tmp_path / "run")
    kept = checkpoint.checkpoints(tmp_path / "run" / "checkpoints")
    assert [p.name for p in kept] == ["round-000002", "round-000003"]
    model = AutoModelForCausalLM.from_pretrained(kept[-1] / "model")
    tok = AutoTokenizer.from_pretrained(kept[-1] / "model")
    assert model.config.num_hidden_layers == cfg.model.tiny_layers and tok("What is 1 + 1?")["input_ids"]


def test_damaged_checkpoints_are_named_and_skipped(tmp_path):
    cfg = compose(overrides(tmp_path, rounds=2))
    train(cfg, tmp_path / "run")
    root = tmp_path / "run" / "checkpoints"
    newest = root / "round-000002"
    weights = newest / "model" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(RapidError, match=r"round-000002 is corrupt: model/model.safetensors"):
        checkpoint.find(str(newest), root)
    assert checkpoint.find("auto", root) == root / "round-000001"  # auto falls back to the intact one
    (root / "round-000001" / "manifest.json").unlink()
    with pytest.raises(RapidError, match="no intact checkpoint"):
        checkpoint.find("auto", root)
    partial = root / ".tmp-round-000003-abc"
    partial.mkdir()
    assert partial not in checkpoint.checkpoints(root)


def test_resume_refuses_a_different_model_or_task(tmp_path):
    args = overrides(tmp_path, rounds=1)
    train(compose(args), tmp_path / "run")
    with pytest.raises(RapidError, match=r"task.max_train: None -> 10.*model.tiny_layers: 2 -> 3|model.tiny_layers.*task.max_train"):
        train(compose(args + ["train.resume=auto", "task.max_train=10", "model.tiny_layers=3"]), tmp_path / "run")


def test_a_failed_save_keeps_the_previous_checkpoint(tmp_path):
    cfg = compose(overrides(tmp_path, rounds=1))
    train(cfg, tmp_path / "run")
    root = tmp_path / "run" / "checkpoints"
    from rapid_cli.policy import load_policy

    model, tok, _ = load_policy(cfg.model, torch.device("cpu"))
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))  # the kernel refuses writes past 64 KiB, like a full disk
    try:
        with pytest.raises(RapidError, match=r"could not save the round-2 checkpoint .*round-000001 is intact"):
            checkpoint.save(root, 2, model, tok, {"cursor": 0}, cfg, keep=1)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert [p.name for p in root.iterdir()] == ["round-000001"]  # no half-written round 2, round 1 kept
    checkpoint.verify(root / "round-000001")
