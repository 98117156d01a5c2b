"""W&B: offline by default with the composed config and tables of sample completions; an unreachable
W&B server in online mode degrades to offline logging with a warning instead of stopping training."""

from __future__ import annotations

import json
import time

import pytest

from conftest import TINY, rapid

RUN = [o for o in TINY if not o.startswith("logger.wandb")] + ["logger.wandb.samples_every=1"]


def rapid_train(*args, env=None):
    return rapid("train", *args, **{"WANDB_MODE": None, **(env or {})})  # the config's logger.wandb.mode decides


@pytest.mark.slow
def test_offline_run_has_config_metrics_and_sample_tables(tmp_path):
    proc = rapid_train(*RUN, "logger.wandb.mode=offline", f"hydra.run.dir={tmp_path}", env={"WANDB_MODE": "offline"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (run,) = (tmp_path / "wandb").glob("offline-run-*")
    assert f"wandb sync {run}" in proc.stdout
    record = next(run.glob("run-*.wandb")).read_bytes()  # the run's log; the config travels in it
    assert b"steps_per_generation" in record and b"group_size" in record
    tables = sorted((run / "files" / "media" / "table" / "samples").glob("completions_*.table.json"))
    assert len(tables) == 2  # one per round with samples_every=1
    data = json.loads(tables[0].read_text())
    assert data["columns"] == ["round", "prompt", "completion", "reward"] and data["data"]


@pytest.mark.slow
def test_unreachable_wandb_online_falls_back_to_offline(tmp_path):
    import wandb

    from rapid_cli.hub import unreachable

    if unreachable(wandb.Settings().base_url) is None:
        pytest.skip("the W&B server is reachable from here")
    start = time.time()
    proc = rapid_train(*RUN, "logger.wandb.mode=online", f"hydra.run.dir={tmp_path}",
                       env={"WANDB_API_KEY": "x" * 40})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "logging offline instead" in proc.stdout and list((tmp_path / "wandb").glob("offline-run-*"))
    assert time.time() - start < 120
    assert (tmp_path / "metrics.jsonl").exists()
