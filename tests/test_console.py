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
