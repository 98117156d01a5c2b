"""What a person reads: whole lines in a log file (no wrapping at 80 columns), a line per round, where the
results are at the end (and the command printed there works), progress during a long `rapid eval`."""

from __future__ import annotations

import os
import shlex

import pytest

from conftest import REPO, TINY
from conftest import rapid as run_rapid


def rapid(*args, cwd=REPO):
    return run_rapid(*args, cwd=cwd, COLUMNS="80")  # an 80-column terminal's width


@pytest.mark.slow
def test_a_run_log_has_whole_lines_and_ends_with_where_things_are(tmp_path):
    run_dir = tmp_path / ("a-directory-name-long-enough-to-cross-eighty-columns-" * 2)
    proc = rapid("train", *TINY, "train.rounds=2", f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert any(line.endswith(f"-> {run_dir}") for line in lines)  # the path whole, on its header line
    assert [line.split(":")[0] for line in lines if line.startswith("round ")] == ["round 1", "round 2"]
    assert all(" gen " in line and "upd" in line for line in lines if line.startswith("round "))
    found = {line.split(":", 1)[0]: line.split(":", 1)[1].strip() for line in lines if line.split(":", 1)[0] in
             ("metrics", "curves", "checkpoint", "try it")}
    assert found["metrics"] == str(run_dir / "metrics.jsonl") and os.path.exists(found["curves"])
    assert found["checkpoint"].endswith("round-000002")
    command = shlex.split(found["try it"])
    assert command[:2] == ["rapid", "eval"]
    tried = rapid(*command[1:], "sampler=hf", "eval.limit=40", "eval.n=2", "sampler.max_tokens=4",
                  f"hydra.run.dir={tmp_path / 'eval'}")
    assert tried.returncode == 0, tried.stdout + tried.stderr
    progress = [line for line in tried.stdout.splitlines() if line.startswith("evaluating:")]
    assert progress and progress[-1] == "evaluating: 40/40 problems", tried.stdout


def test_printed_commands_paste_as_printed(tmp_path, capsys):
    """A sweep job's directory holds '=' and ',' (seed=0,algo...): the "try it:" command printed after each job
    and the "resume with:" command failed when pasted (Hydra read the path as more overrides or a sweep).
    Each is split as a shell does and parsed as Hydra does; the values come back whole."""
    from types import SimpleNamespace

    from hydra.core.override_parser.overrides_parser import OverridesParser

    from conftest import compose
    from rapid_cli.logger import RunLogger
    from rapid_cli.resume import resume_command
    from rapid_cli.tasks import make_task

    run = tmp_path / "multirun" / "seed=0,algo.steps_per_generation=2 [it's]"
    checkpoint = run / "checkpoints" / "round-000002"
    data = "/data/q=1,2 [it's].jsonl"
    task = make_task(compose(["task=arith", f"task.data_path=\"{data}\""]).task)
    RunLogger.where(SimpleNamespace(metrics_path=run / "metrics.jsonl", run_dir=run), checkpoint, task.cli_args())
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("try it:"))
    command = shlex.split(line.split(":", 1)[1])
    assert command[:2] == ["rapid", "eval"]
    cfg = compose(command[2:])
    assert cfg.model.path == str(checkpoint / "model") and cfg.task.data_path == data and cfg.task.name == "arith"

    # the overrides as Hydra recorded them (its grammar, after the shell's quoting was taken off)
    hydra_lines = ["seed=0", "algo.steps_per_generation=2", "eval.k=[1,2]",
                   "task.data_path='/data/q=1,2 [it\\'s].jsonl'", "reward.functions=[{_target_: m.fn, weight: 0.5}]",
                   "hydra.run.dir=x", "train.resume=auto"]
    command = shlex.split(resume_command(hydra_lines, run))
    assert command[:2] == ["rapid", "train"]
    parsed = {o.key_or_group: o.value() for o in OverridesParser.create().parse_overrides(command[2:])}
    assert parsed["hydra.run.dir"] == str(run) and parsed["task.data_path"] == data
    assert parsed["train.resume"] == "auto" and parsed["eval.k"] == [1, 2] and parsed["seed"] == 0
    assert parsed["reward.functions"] == [{"_target_": "m.fn", "weight": 0.5}]
