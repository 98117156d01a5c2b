"""Errors a user can cause end in one line that names the file or key and the fix; nothing on disk is lost."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import RAPID, REPO, TINY, compose, rapid
from rapid_cli.models import build_tiny_model


def one_error_line(proc) -> str:
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "Traceback" not in out, out
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, out
    return errors[0]


@pytest.fixture
def model_copy(tmp_path):
    return shutil.copytree(build_tiny_model(compose(["model=tiny"]).model), tmp_path / "model")


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncated", "random", "config"])
def test_a_damaged_model_directory_is_named(model_copy, tmp_path, damage):
    weights = model_copy / "model.safetensors"
    if damage == "truncated":
        weights.write_bytes(weights.read_bytes()[:-4096])
    elif damage == "random":
        weights.write_bytes(os.urandom(50_000))
    else:
        (model_copy / "config.json").write_text('{"model_type": "qwen2", ')
    line = one_error_line(rapid("eval", f"model.path={model_copy}", "task=arith", "sampler=hf", "eval.limit=2",
                                f"hydra.run.dir={tmp_path / 'run'}"))
    named = "config.json" if damage == "config" else "model.safetensors"
    assert named in line and "hub" not in line, line


@pytest.mark.slow
def test_max_tokens_past_the_model_context_is_refused(tmp_path):
    line = one_error_line(rapid("train", *TINY, "sampler.max_tokens=5000", f"hydra.run.dir={tmp_path / 'run'}"))
    assert "sampler.max_tokens=5000" in line and "context of 4096 tokens" in line, line


def as_user(argv: list[str]) -> list[str]:
    """Run as an unprivileged user when we are root (root ignores permissions; users are not root)."""
    return ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *argv] if os.geteuid() == 0 else argv


@pytest.mark.slow
def test_unwritable_run_and_cache_directories():
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="rapid-perm-"))
    base.chmod(0o777)  # reachable by the unprivileged user
    cache = base / "cache"
    cache.mkdir(mode=0o777)
    a_file = base / "file"
    a_file.write_text("x")
    read_only = base / "ro"
    read_only.mkdir(mode=0o555)
    env = {**os.environ, "WANDB_MODE": "disabled", "RAPID_CACHE": str(cache), "HOME": str(base)}

    def run(*args):
        return subprocess.run(as_user([RAPID, "train", *TINY, *args]), cwd=base, env=env, capture_output=True,
                              text=True, timeout=600)

    for bad in (a_file / "run", read_only / "run"):
        line = one_error_line(run(f"hydra.run.dir={bad}"))
        assert str(bad.parent) in line and "hydra.run.dir" in line, line
    line = one_error_line(run(f"cache_dir={read_only / 'cache'}", f"hydra.run.dir={base / 'ok'}"))
    assert str(read_only) in line, line
    line = one_error_line(subprocess.run(as_user([RAPID, "train", *TINY]), cwd=read_only, env=env, capture_output=True,
                                         text=True, timeout=600))  # the default outputs/ under a read-only cwd
    assert "outputs" in line, line
    shutil.rmtree(base, ignore_errors=True)


def test_metrics_survive_a_full_disk(tmp_path, tiny_cfg, capsys):
    """A metrics write that fails (the kernel refusing writes past a size, like a full disk) is kept in
    memory, said once, and written when space is back: every round once, in order, no half line."""
    import resource
    import signal

    from rapid_cli.logger import RunLogger

    log = RunLogger(tiny_cfg, tmp_path, 4, "t")
    log.log({"reward/mean": 0.1}, step=1)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of death, as ENOSPC would be
    resource.setrlimit(resource.RLIMIT_FSIZE, (60, hard))
    try:
        log.log({"reward/mean": 0.2, "padding": "x" * 100}, step=2)
        log.log({"reward/mean": 0.3}, step=3)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    assert [json.loads(x)["round"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1]
    log.log({"reward/mean": 0.4}, step=4)
    log.close()
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2, 3, 4]
    assert capsys.readouterr().out.count("could not write") == 1


@pytest.mark.slow
def test_a_full_disk_at_start_is_one_line(tmp_path):
    """Writes past a few KB fail (EFBIG, as ENOSPC would): the run stops with one line before any round."""
    import resource
    import signal

    def full_disk():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (2000, 2000))

    build_tiny_model(compose(["model=tiny"]).model)  # the model cache is already there; the run's own files are not
    proc = subprocess.run([RAPID, "train", *TINY, f"hydra.run.dir={tmp_path / 'run'}"], cwd=REPO, capture_output=True,
                          text=True, timeout=600, env={**os.environ, "WANDB_MODE": "disabled"}, preexec_fn=full_disk)
    line = one_error_line(proc)
    assert "File too large" in line or "No space" in line, line
