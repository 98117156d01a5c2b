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
from rapid_cli.errors import RapidError
from rapid_cli.trainer import train

NUMERIC = "reward.functions=[{_target_: rapid_cli.rewards.numeric_match}]"


def learnable_data(tmp_path) -> str:
    """Problems whose answer (90) the random tiny model sometimes writes, scored by `numeric_match` (the last
    number anywhere), so rewards are not all zero and the update really moves the weights. (task=gsm8k's rule
    gives a completion cut off at max_tokens nothing unless it states its answer, which a random model never does.)"""
    folder = tmp_path / "nineties"
    folder.mkdir(exist_ok=True)
    rows = "".join(json.dumps({"question": f"What is {a} + {90 - a}?", "answer": "90"}) + "\n" for a in range(40))
    for split in ("train", "test"):  # train on all 40 (a single file would hold 12 out)
        (folder / f"{split}.jsonl").write_text(rows)
    return str(folder)


def overrides(tmp_path, rounds: int = 5) -> list[str]:
    keep = [o for o in TINY if not o.startswith(("task=", "train.rounds", "algo.group_size", "algo.micro_batch_size",
                                                  "sampler.max_tokens"))]
    return keep + ["task=custom", f"task.data_path={learnable_data(tmp_path)}", "task.prompt_field=question", NUMERIC,
                   "algo.group_size=4",
                   "algo.micro_batch_size=4", "sampler.max_tokens=16", f"train.rounds={rounds}", "train.save_every=1",
                   "train.keep_checkpoints=0", "optimizer.lr=1e-3", "eval.every=2"]


def interruptible() -> None:
    """Ctrl-C as a user's terminal delivers it. A test run started in the background by a non-interactive shell
    (`bash .ci/run &`) hands its children SIGINT ignored, and Python keeps an inherited ignore: `rapid eval`
    (which installs no handler of its own) would then run to the end under the test's Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_train(*args, **kw):
    env = {**os.environ, "WANDB_MODE": "disabled"}
    return subprocess.Popen([RAPID, "train", *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, preexec_fn=interruptible, **kw)


def records(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def comparable(rows: list[dict]) -> list[dict]:
    """Everything but wall-clock and memory measurements, which differ between any two runs."""
    return [{k: v for k, v in r.items()
             if not k.startswith("time/") and k != "perf/gen_tokens_per_s" and "_peak_" not in k}
            for r in rows]


def wait_for(path, proc, timeout=300):
    start = time.time()
    while not path.exists():
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() - start < timeout
        time.sleep(0.01)


# LoRA: the adapter is what trains and what the checkpoint holds; a reward the random model earns now and then
LORA_RUN = ["lora=default", "lora.r=4",
            "reward.functions=[{_target_: rapid_cli.rewards.format_match, pattern: '.*9.*'}]"]


@pytest.mark.slow
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_sigkill_mid_round_then_resume_equals_an_uninterrupted_run(tmp_path, lora):
    args = overrides(tmp_path, rounds=6)
    if lora:
        args = [o for o in args if not o.startswith("reward.functions")] + LORA_RUN
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    proc = start_train(*args, f"hydra.run.dir={whole}")
    assert proc.wait(600) == 0, proc.stdout.read()

    proc = start_train(*args, f"hydra.run.dir={killed}")
    wait_for(killed / "checkpoints" / "round-000002" / "manifest.json", proc)
    time.sleep(0.05)  # into round 3
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL  # it really died before finishing
    assert not (killed / "checkpoints" / "round-000006").exists()

    resumed = start_train(*args, f"hydra.run.dir={killed}", "train.resume=auto")
    out = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0, out
    assert "resuming from" in out

    a, b = records(whole), records(killed)
    assert [r["round"] for r in b] == list(range(7))  # no round twice, none missing
    assert comparable(a) == comparable(b)
    assert sum(r.get("reward/mean", 0) for r in a) > 0  # the comparison covered real learning
    weights = "adapter/adapter_model.safetensors" if lora else "model/model.safetensors"
    wa = load_file(whole / "checkpoints" / "round-000006" / weights)
    wb = load_file(killed / "checkpoints" / "round-000006" / weights)
    w0 = load_file(whole / "checkpoints" / "round-000001" / weights)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert any(not torch.equal(wa[k], w0[k]) for k in wa)


@pytest.mark.slow
def test_ctrl_c_finishes_the_round_saves_and_prints_how_to_resume(tmp_path):
    args = overrides(tmp_path, rounds=40)
    run_dir = tmp_path / "run"
    proc = start_train(*args, f"hydra.run.dir={run_dir}", "train.save_every=0")
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
    with pytest.raises(RapidError, match="no intact checkpoint .* to start afresh, give another hydra.run.dir"):
        checkpoint.find("auto", root)
    partial = root / ".tmp-round-000003-abc"
    partial.mkdir()
    assert partial not in checkpoint.checkpoints(root)


def test_resume_refuses_a_different_model_or_task(tmp_path):
    args = overrides(tmp_path, rounds=1)
    train(compose(args), tmp_path / "run")
    with pytest.raises(RapidError, match=r"task.max_train: None -> 10.*model.tiny_layers: 2 -> 3|"
                                         r"model.tiny_layers.*task.max_train"):
        train(compose(args + ["train.resume=auto", "task.max_train=10", "model.tiny_layers=3"]), tmp_path / "run")


def test_a_failed_save_keeps_the_previous_checkpoint(tmp_path):
    cfg = compose(overrides(tmp_path, rounds=1))
    train(cfg, tmp_path / "run")
    root = tmp_path / "run" / "checkpoints"
    from rapid_cli.policy import load_policy

    model, tok, _ = load_policy(cfg.model, torch.device("cpu"))
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    # the kernel refuses writes past 64 KiB, like a full disk
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))
    try:
        with pytest.raises(RapidError, match=r"could not save the round-2 checkpoint .*round-000001 is intact"):
            checkpoint.save(root, 2, model, tok, {"cursor": 0}, cfg, keep=1)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert [p.name for p in root.iterdir()] == ["round-000001"]  # no half-written round 2, round 1 kept
    checkpoint.verify(root / "round-000001")


def _wait_rounds(run_dir, proc, n: int) -> None:
    wait_for(run_dir / "metrics.jsonl", proc)
    while len(records(run_dir)) < n + 1:  # the at-start eval, then n rounds
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.01)


@pytest.mark.slow
def test_sigterm_mid_round_saves_and_resumes_to_the_same_weights(tmp_path):
    """What SLURM, `timeout`, docker and Kubernetes send: the round finishes, is saved, and the resumed run
    ends bit-identical to an uninterrupted one."""
    args = overrides(tmp_path, rounds=6) + ["train.save_every=3"]
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    proc = start_train(*args, f"hydra.run.dir={whole}")
    assert proc.wait(600) == 0, proc.stdout.read()

    proc = start_train(*args, f"hydra.run.dir={stopped}")
    _wait_rounds(stopped, proc, 1)  # round 1 done, no checkpoint yet (save_every=3): all of it is at stake
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 128 + signal.SIGTERM, out
    last = records(stopped)[-1]["round"]
    assert 1 <= last < 6 and "Traceback" not in out
    assert (stopped / "checkpoints" / f"round-{last:06d}" / "manifest.json").exists()
    assert (stopped / "curves.png").exists()
    assert f"hydra.run.dir={stopped} train.resume=auto" in out.replace("\n", " ")

    resumed = start_train(*args, f"hydra.run.dir={stopped}", "train.resume=auto")
    out = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0, out
    assert comparable(records(whole)) == comparable(records(stopped))
    wa = load_file(whole / "checkpoints" / "round-000006" / "model" / "model.safetensors")
    wb = load_file(stopped / "checkpoints" / "round-000006" / "model" / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["second-ctrl-c", "sigterm-grace-expired"])
def test_an_abandoned_round_is_one_line_and_keeps_the_last_checkpoint(tmp_path, how, monkeypatch):
    run_dir = tmp_path / "run"
    extra = ["train.stop_grace_s=0.001"] if how == "sigterm-grace-expired" else []
    # A reward that takes 0.5 s keeps each round mid-way most of the time: on a fast machine the tiny model's
    # round is a few ms of work beside its checkpoint, and a signal that lands during a save ends the run cleanly
    # with that checkpoint (another path than the one tested here).
    (tmp_path / "slow_rewards.py").write_text(
        "import time\nfrom rapid_cli.rewards import numeric_match\n\n\n"
        "def slow_numeric(completions, answer, **kw):\n    time.sleep(0.5)\n"
        "    return numeric_match(completions, answer, **kw)\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    slow = "reward.functions=[{_target_: slow_rewards.slow_numeric}]"
    args = [slow if o == NUMERIC else o for o in overrides(tmp_path, rounds=200)]
    proc = start_train(*args, f"hydra.run.dir={run_dir}", *extra)
    _wait_rounds(run_dir, proc, 2)
    # mid-round 3: past round 2's checkpoint (a signal during a save stops cleanly with that checkpoint)
    wait_for(run_dir / "checkpoints" / "round-000002" / "manifest.json", proc)
    time.sleep(0.3)
    if how == "second-ctrl-c":
        proc.send_signal(signal.SIGINT)
        time.sleep(0.005)
        proc.send_signal(signal.SIGINT)
    else:
        proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=300)[0]
    sig = signal.SIGINT if how == "second-ctrl-c" else signal.SIGTERM
    assert proc.returncode == 128 + sig, out
    assert "Traceback" not in out and "KeyboardInterrupt" not in out, out
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "is intact; resume with: rapid train" in errors[0], out
    for ckpt in checkpoint.checkpoints(run_dir / "checkpoints"):
        checkpoint.verify(ckpt)  # every checkpoint on disk is whole
    assert checkpoint.checkpoints(run_dir / "checkpoints")


@pytest.mark.slow
@pytest.mark.parametrize("command", ["train", "eval"])
def test_ctrl_c_before_any_round_is_one_line(tmp_path, command):
    """During the at-start evaluation of `rapid train`, or while `rapid eval` generates."""
    run_dir = tmp_path / "run"
    env = {**os.environ, "WANDB_MODE": "disabled"}
    # ~8 s of evaluation on the tiny model (n=4 took 0.9 s): room for the signal to land inside it on a busy machine
    args = [o for o in overrides(tmp_path) if not o.startswith("eval.")] + ["eval.limit=40", "eval.n=32",
                                                                           "sampler.max_tokens=64"]
    proc = subprocess.Popen([RAPID, command, *args, f"hydra.run.dir={run_dir}"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=interruptible)
    seen = ""
    while "rapid" not in seen.lower() or "->" not in seen:  # the header line: loading is done, evaluation starts
        line = proc.stdout.readline()
        assert line, seen
        seen += line
    time.sleep(0.2)  # into the evaluation
    proc.send_signal(signal.SIGINT)
    out = seen + proc.communicate(timeout=300)[0]
    assert proc.returncode == 130, out
    assert "Traceback" not in out and "KeyboardInterrupt" not in out, out
    assert [line for line in out.splitlines() if line.startswith("error:")], out
    assert not (run_dir / "checkpoints").exists() and not (run_dir / "eval.json").exists()


def test_a_new_learning_rate_applies_on_resume(tmp_path):
    args = overrides(tmp_path, rounds=1)
    train(compose(args), tmp_path / "run")
    resumed = train(compose([*[o for o in args if not o.startswith("train.rounds")], "train.rounds=2",
                             "optimizer.lr=5e-4", "train.resume=auto"]), tmp_path / "run")
    rows = records(tmp_path / "run")
    assert rows[1]["train/lr"] == pytest.approx(1e-3) and rows[2]["train/lr"] == pytest.approx(5e-4)
    assert resumed["train/lr"] == pytest.approx(5e-4)


def test_rng_state_restores_with_fewer_gpus_visible(monkeypatch):
    """A checkpoint saved with 8 GPUs visible resumes on a machine (or a rank) that sees 1. CUDA cannot run
    here, so a stand-in for torch.cuda that refuses device indices it does not have, as the real one does."""
    restored = []

    def set_rng_state(new_state, device="cuda"):
        index = 0 if device == "cuda" else int(device)
        if index >= 1:
            raise IndexError(f"no CUDA device {index}")
        restored.append(new_state)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "set_rng_state", set_rng_state)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": torch.tensor([7], dtype=torch.uint8))
    saved_on_eight = {**checkpoint.rng_state(), "cuda": [torch.tensor([i], dtype=torch.uint8) for i in range(8)]}
    saved_on_eight.pop("cuda_device", None)
    checkpoint.set_rng_state(saved_on_eight)  # an older checkpoint: a list over 8 devices
    checkpoint.set_rng_state(checkpoint.rng_state())  # a new one: this device's state only
    assert [int(t[0]) for t in restored] == [0, 7]


def test_resume_without_checkpoints_never_mixes_two_runs_in_one_metrics_file(tmp_path, capsys):
    """Published results keep metrics.jsonl but not the weights, and users prune checkpoints to free disk:
    `train.resume=auto` there must neither append a second run to the first's rows nor redo a finished run."""
    import shutil

    run = tmp_path / "run"
    args = overrides(tmp_path, rounds=2)
    train(compose(args), run)
    shutil.rmtree(run / "checkpoints")
    before = (run / "metrics.jsonl").read_bytes()

    again = train(compose(args + ["train.resume=auto"]), run)  # finished: nothing to redo, nothing loaded
    assert (run / "metrics.jsonl").read_bytes() == before
    assert not (run / "checkpoints").exists()
    assert "already holds the last round (2)" in capsys.readouterr().out
    assert again["eval/pass@1_after"] == records(run)[-1]["eval/pass@1"]

    longer = [o for o in args if not o.startswith("train.rounds")] + ["train.rounds=3", "train.resume=auto"]
    train(compose(longer), run)  # unfinished and nothing to continue from: afresh, the old rows kept aside
    assert [r["round"] for r in records(run)] == [0, 1, 2, 3]  # round 0: the eval before training
    assert sorted(p.name for p in run.glob("metrics*.jsonl")) == ["metrics.before-restart.jsonl", "metrics.jsonl"]
    assert (run / "metrics.before-restart.jsonl").read_bytes() == before

    shutil.rmtree(run / "checkpoints")  # and once more: the first restart's rows are not overwritten
    second = (run / "metrics.jsonl").read_bytes()
    train(compose([o for o in longer if not o.startswith("train.rounds")] + ["train.rounds=4"]), run)
    assert (run / "metrics.before-restart.jsonl").read_bytes() == before
    assert (run / "metrics.before-restart-2.jsonl").read_bytes() == second
