"""A run directory belongs to one run: never shared, never restarted on top of, resumed only when it is
provably the same run."""

from __future__ import annotations

import datetime
import os
import subprocess

import pytest
import yaml

from conftest import RAPID, REPO, TINY, compose
from rapid_cli.errors import RapidError
from rapid_cli.resume import same_run
from rapid_cli.rundir import RunLock, claim
from rapid_cli.trainer import train


def test_runs_started_in_the_same_second_get_their_own_directories(tmp_path):
    now = datetime.datetime(2026, 11, 24, 10, 0, 0)
    dirs = [claim(tmp_path / "outputs", now) for _ in range(3)]
    assert [d.name for d in dirs] == ["10-00-00", "10-00-00-2", "10-00-00-3"]
    assert all(d.is_dir() for d in dirs)


def train_tiny(*args, cwd=REPO):
    env = {**os.environ, "WANDB_MODE": "disabled"}
    return subprocess.run([RAPID, "train", *TINY, "train.rounds=1", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.slow
def test_a_finished_run_is_never_restarted_on_top_of(tmp_path):
    run_dir = tmp_path / "run"
    assert train_tiny(f"hydra.run.dir={run_dir}").returncode == 0
    before = {p: p.read_bytes() for p in [run_dir / "metrics.jsonl", run_dir / ".hydra" / "config.yaml"]}
    proc = train_tiny(f"hydra.run.dir={run_dir}", "seed=5")
    assert proc.returncode == 2
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1 and "already holds a run" in lines[0] and "train.resume=auto" in lines[0], proc.stdout
    assert {p: p.read_bytes() for p in before} == before  # its metrics and config untouched


@pytest.mark.slow
def test_a_run_dir_in_use_is_refused(tmp_path):
    run_dir = tmp_path / "run"
    with RunLock(run_dir):
        proc = train_tiny(f"hydra.run.dir={run_dir}", "train.resume=auto")
    assert proc.returncode == 2 and f"holds a run in progress (pid {os.getpid()})" in proc.stdout, proc.stdout
    assert not (run_dir / "metrics.jsonl").exists()


def _fake_hydra_run(run_dir, overrides: list[str]) -> None:
    """What Hydra writes into a run directory, beside the run the trainer wrote."""
    from omegaconf import OmegaConf

    train(compose(overrides), run_dir)
    (run_dir / ".hydra").mkdir()
    (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    OmegaConf.save(compose(overrides), run_dir / ".hydra" / "config.yaml")


def test_resume_auto_continues_only_a_provably_same_run(tmp_path):
    day = tmp_path / "outputs" / "2026-11-24"
    same, other, damaged = day / "09-00-00", day / "09-30-00", day / "09-45-00"
    args = [*TINY, "train.rounds=1"]
    _fake_hydra_run(same, args)
    _fake_hydra_run(other, [*args, "seed=3"])
    _fake_hydra_run(damaged, args)
    weights = next((damaged / "checkpoints").glob("round-*")) / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])  # truncated by a crash or a full disk
    os.utime(damaged, (2e9, 2e9))  # the newest candidate by time: it must still be passed over
    new = claim(tmp_path / "outputs", datetime.datetime(2026, 11, 24, 10, 0, 0))
    (new / ".hydra").mkdir()
    from omegaconf import OmegaConf

    OmegaConf.save(compose([*args, "train.resume=auto"]), new / ".hydra" / "config.yaml")
    assert same_run(new, [*args, "train.resume=auto"]) == same
    # a config that differs without an override saying so (e.g. an edited preset) is a different run
    OmegaConf.save(compose([*args, "train.resume=auto", "optimizer.lr=0.5"]), new / ".hydra" / "config.yaml")
    assert same_run(new, [*args, "train.resume=auto"]) == new
    assert same_run(day / "named-by-the-user", [*args, "train.resume=auto"]) == day / "named-by-the-user"
    # the job's own config, in memory: its .hydra/ is written only once the run directory is locked
    (new / ".hydra" / "config.yaml").unlink()
    assert same_run(new, [*args, "train.resume=auto"], compose([*args, "train.resume=auto"])) == same
    assert same_run(new, [*args, "train.resume=auto"], compose([*args, "train.resume=auto", "optimizer.lr=0.5"])) == new


def test_a_file_as_the_run_directory_is_named_as_a_file(tmp_path):
    from rapid_cli.rundir import writable

    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(RapidError, match=r"notes.txt is a file, not a directory; choose a directory for the run$"):
        writable(tmp_path / "notes.txt")
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_lock_is_released_when_the_run_ends(tmp_path):
    with RunLock(tmp_path):
        busy = r"holds a run in progress .* hydra.run.dir \(hydra.sweep.dir for a sweep\)"
        with pytest.raises(RapidError, match=busy):
            RunLock(tmp_path).__enter__()
    with RunLock(tmp_path):
        pass


@pytest.mark.parametrize("resume", [False, True])
def test_a_run_in_progress_is_refused_before_anything_is_written(tmp_path, resume):
    """A start or resume in a directory another rapid process trains in overwrote that live run's
    .hydra/config.yaml and overrides.yaml before the lock refused it (and then `rapid report` labelled the live run
    with the newcomer's settings); a start there before the live run's first round suggested train.resume=auto."""
    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    live = {name: f"the live run's {name}\n" for name in ("config.yaml", "overrides.yaml", "hydra.yaml")}
    for name, text in live.items():
        (run_dir / ".hydra" / name).write_text(text)
    with RunLock(run_dir):
        proc = train_tiny(f"hydra.run.dir={run_dir}", "optimizer.lr=1e-3", *(["train.resume=auto"] if resume else []))
    out = (proc.stdout + proc.stderr).strip()
    assert proc.returncode == 2 and "\n" not in out, out
    assert f"{run_dir} holds a run in progress (pid {os.getpid()})" in out and "train.resume" not in out, out
    assert {name: (run_dir / ".hydra" / name).read_text() for name in live} == live
    assert sorted(p.name for p in run_dir.iterdir()) == [".hydra", ".rapid.lock"]


def test_resume_auto_with_one_override_changed_names_the_closest_run_and_how_to_continue_it(tmp_path, capsys):
    """"Extend my run": train.rounds 1 -> 2 with train.resume=auto started from scratch in a new directory,
    naming neither the near-identical earlier run nor train.resume=<dir>. Now one line names the closest earlier
    run, the keys that differ and the command that continues it, and that command pastes as printed."""
    from rapid_cli.overrides import override

    day = tmp_path / "outputs" / "2026-11-24"
    earlier, farther = day / "09-00-00", day / "09-30-00"
    _fake_hydra_run(earlier, [*TINY, "train.rounds=1"])
    _fake_hydra_run(farther, [*TINY, "train.rounds=1", "seed=3"])  # newer, but two keys away
    os.utime(farther, (2e9, 2e9))
    capsys.readouterr()
    new = claim(tmp_path / "outputs", datetime.datetime(2026, 11, 24, 10, 0, 0))
    now = [*TINY, "train.rounds=2", "train.resume=auto"]
    assert same_run(new, now, compose(now)) == new  # not the same run: a new one, as before
    out = " ".join(capsys.readouterr().out.split())
    assert f"the closest earlier run, {earlier}, differs in train.rounds 1 -> 2" in out, out
    assert str(farther) not in out
    command = out.split(": ")[-1]
    assert command == f"rapid train {' '.join(TINY)} train.rounds=2 {override('train.resume', str(earlier))}", out
    assert "round-1 checkpoint to round 2" in out

    env = {**os.environ, "WANDB_MODE": "disabled", "PATH": f"{os.path.dirname(RAPID)}:{os.environ['PATH']}"}
    proc = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and "resuming" in proc.stdout, proc.stdout + proc.stderr
    assert "round 1 of 2" in proc.stdout, proc.stdout


def test_resume_auto_names_no_run_when_none_is_close(tmp_path, capsys):
    day = tmp_path / "outputs" / "2026-11-24"
    _fake_hydra_run(day / "09-00-00", [*TINY, "train.rounds=1", "seed=3", "optimizer.lr=0.5", "sampler.max_tokens=4"])
    capsys.readouterr()
    new = claim(tmp_path / "outputs", datetime.datetime(2026, 11, 24, 10, 0, 0))
    now = [*TINY, "train.rounds=2", "train.resume=auto"]
    assert same_run(new, now, compose(now)) == new
    assert "closest" not in capsys.readouterr().out


@pytest.mark.slow
def test_resuming_a_run_still_in_progress_elsewhere_says_that_both_go_on(tmp_path, capsys):
    """`train.resume=<dir>` whose run is still training read its newest checkpoint and went on in a new directory
    without a word: two processes continuing one run. Branching is legitimate, so it is one line, not a refusal."""
    from rapid_cli.resume import resume_point

    live = tmp_path / "live"
    assert train_tiny(f"hydra.run.dir={live}").returncode == 0
    cfg = compose([*TINY, "train.rounds=1", f"train.resume={live}"])
    with RunLock(live):
        path, state = resume_point(cfg, tmp_path / "branch")
    said = " ".join(capsys.readouterr().out.split())
    assert path.parent == live / "checkpoints" and state.round == 1
    assert f"{live} is still training (pid {os.getpid()})" in said, said
    assert f"branches from its round-1 checkpoint into {tmp_path / 'branch'}; both go on" in said, said
    resume_point(cfg, tmp_path / "again")  # the run has ended: nothing to say
    assert "still training" not in capsys.readouterr().out
