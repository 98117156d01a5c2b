"""The comparison runner end to end on the tiny model: every contender runs on the same sample budget
and the table carries the ratios to GRPO."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import REPO


@pytest.mark.slow
def test_compare_runs_rapid_and_baselines_on_one_budget(tmp_path):
    cmd = [sys.executable, str(REPO / "scripts" / "compare.py"), "--out", str(tmp_path), "--samples", "16",
           "--seeds", "0", "--a", "1", "2", "--algos", "grpo", "dapo", "--", "model=tiny", "sampler=hf",
           "algo.group_size=2", "algo.prompts_per_step=2", "algo.micro_batch_size=2", "sampler.max_tokens=8",
           "eval.limit=4", "eval.n=1", "eval.k=[1]"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    table = (tmp_path / "compare.md").read_text()
    rows = {line.split("|")[1].strip(): line for line in table.splitlines()
            if line.startswith("| ") and "---" not in line}
    assert set(rows) == {"config", "rapid A=1", "rapid A=2", "grpo", "dapo"}
    assert "| 1.00 |" in rows["grpo"]  # GRPO against itself
    # rounds: same budget
    assert rows["rapid A=2"].split("|")[3].strip() == "2" and rows["grpo"].split("|")[3].strip() == "4"
    assert (tmp_path / "compare.png").stat().st_size > 5000
