"""Two real gloo processes on the CPU: ranks waiting for rank 0 (evaluating, saving), ranks that disagree on
the checkpoint to resume from, and FSDP weights streamed to the sampler one tensor at a time."""

from __future__ import annotations

import json
import os
import socket
import time

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from conftest import TINY, compose

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, port: int, out: str, scenario: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    from rapid_cli import distributed
    from rapid_cli.errors import RapidError

    parallel = "fsdp" if scenario == "stream" else "ddp"
    cfg = compose(TINY + [f"train.parallel={parallel}", "device=cpu", "train.dist_timeout_s=1"])
    d = distributed.setup(cfg.train, cfg.algo.prompts_per_step, cfg.device)
    result = {}
    try:
        if scenario == "slow_main":
            if d.main:
                time.sleep(3)  # rank 0 evaluates or saves alone, 3x the collectives' timeout
            start = time.perf_counter()
            distributed.wait_for_main(d)
            result["waited_s"] = time.perf_counter() - start
            result["agree"] = distributed.any_rank(d, False) is False  # the default group still works afterwards
        elif scenario == "slow_main_in_a_collective":  # what the trainer did before: wait inside the next collective
            if d.main:
                time.sleep(3)
            distributed.any_rank(d, False)
        elif scenario == "dead_main":
            if d.main:
                time.sleep(1)
                os._exit(1)  # rank 0 dies while evaluating
            start = time.perf_counter()
            try:
                distributed.wait_for_main(d)
            finally:
                result["waited_s"] = time.perf_counter() - start
        elif scenario == "stream":
            import inspect

            import torch

            from rapid_cli.policy import load_policy

            model, _, _ = load_policy(cfg.model, torch.device("cpu"))  # seeded: the same weights on both ranks
            full = {k: v.clone() for k, v in model.state_dict().items()}
            sharded = distributed.wrap(d, model, "none")
            stream = distributed.stream_full_weights(sharded)
            result["lazy"] = inspect.isgenerator(stream)
            name, first = next(stream)
            result["first_is_plain_full"] = type(first) is torch.Tensor and first.shape == full[name].shape
            got = [(name, first), *stream]
            result["names_in_order"] = [n for n, _ in got] == list(full)
            result["equal"] = all(torch.equal(t, full[n]) for n, t in got)
            result["was_sharded"] = any(hasattr(p, "full_tensor") for p in sharded.parameters())
        elif scenario == "different_checkpoints":
            seen = "outputs/run/checkpoints/round-000004" if d.main else None  # rank 1's node has no such directory
            distributed.same_on_all_ranks(d, seen, "the checkpoint to resume from", "share the filesystem")
    except RapidError as err:
        result["error"] = str(err)
    except Exception as err:  # noqa: BLE001 - the timeout's own type varies with the backend
        result["exception"] = f"{type(err).__name__}: {str(err).splitlines()[0]}"
    with open(f"{out}/{rank}.json", "w") as f:
        json.dump(result, f)
    if "exception" not in result:
        dist.destroy_process_group()


def run_two(tmp_path, scenario: str) -> list[dict | None]:
    """Each rank's outcome (None: the rank died). Every process is awaited on its own, so one rank's death
    does not end the other (as torchrun would): the test sees what the survivor's wait does."""
    ctx = mp.start_processes(_rank, args=(_free_port(), str(tmp_path), scenario), nprocs=2, join=False)
    for proc in ctx.processes:
        proc.join(120)
    return [json.loads(p.read_text()) if p.exists() else None for p in (tmp_path / f"{r}.json" for r in range(2))]


def test_ranks_wait_for_a_slow_rank_0_past_the_collective_timeout(tmp_path):
    ranks = run_two(tmp_path, "slow_main")
    assert all("exception" not in r and r["agree"] for r in ranks), ranks
    assert ranks[1]["waited_s"] > 2.5  # rank 1 really waited the 3 s out, 3x train.dist_timeout_s


def test_without_the_wait_the_same_delay_times_out(tmp_path):
    """The premise of the test above: a collective that waits for rank 0's 3 s fails at the 1 s timeout."""
    ranks = run_two(tmp_path, "slow_main_in_a_collective")
    assert "timed out" in ranks[1].get("exception", "").lower(), ranks


def test_a_rank_0_that_dies_does_not_leave_the_others_waiting(tmp_path):
    """The wait has a week's timeout, but gloo notices a peer whose process is gone at once."""
    ranks = run_two(tmp_path, "dead_main")
    assert ranks[0] is None and "exception" in ranks[1] and ranks[1]["waited_s"] < 30, ranks


def test_a_rank_that_sees_another_checkpoint_stops_every_rank_with_one_line(tmp_path):
    ranks = run_two(tmp_path, "different_checkpoints")
    for r in ranks:
        assert "error" in r and "\n" not in r["error"], ranks
        assert r["error"].startswith("rank 1 sees the checkpoint to resume from None but rank 0 sees 'outputs/run/"), r


def test_fsdp_weights_stream_one_full_tensor_at_a_time(tmp_path):
    for r in run_two(tmp_path, "stream"):
        assert r == {"lazy": True, "first_is_plain_full": True, "names_in_order": True, "equal": True,
                     "was_sharded": True}, r
