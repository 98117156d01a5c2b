"""Two real gloo processes on the CPU: ranks waiting for rank 0 (evaluating, saving), ranks that disagree on
the checkpoint to resume from, FSDP weights streamed to the sampler one tensor at a time, ranks with unequal
micro-batch counts, and a rank other than 0 filling an empty model cache."""

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

    parallel = "fsdp" if scenario == "stream" or "_fsdp" in scenario else "ddp"
    passes = scenario.startswith(("uneven", "round_skip"))
    timeout = 30 if passes else 1  # a mismatched collective fails instead of hanging
    algo = scenario.split("_", 3)[3] if scenario.startswith("round_skip") else None  # round_skip_<parallel>_<algo>
    cfg = compose(TINY + [f"train.parallel={parallel}", "device=cpu", f"train.dist_timeout_s={timeout}",
                          *(UNEVEN if passes else []), *(round_of_two(algo, True) if algo else [])])
    d = distributed.setup(cfg.train, cfg.algo.prompts_per_step, cfg.device)
    result = {}
    try:
        if scenario == "slow_main":
            if d.main:
                time.sleep(3)  # rank 0 evaluates or saves alone, 3x the collectives' timeout
            start = time.perf_counter()
            distributed.line_up(d)
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
                distributed.line_up(d)
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
        elif scenario.startswith("uneven"):
            import torch

            from rapid_cli.learner import Learner
            from rapid_cli.policy import load_policy

            model, tok, _ = load_policy(cfg.model, torch.device("cpu"))
            learner = Learner(model, cfg.algo, cfg.optimizer, pad_id=tok.pad_token_id, temperature=1.0,
                              total_steps=1, d=d)
            ro = uneven_rollouts(rank, SKIPPING if "skip" in scenario else None)
            if "skip" in scenario:  # rank 0's groups all score 0: it computes nothing, rank 1 one group
                ro.moving = learner.moving_rows(ro, torch.zeros(len(ro.rewards), dtype=torch.bool))
            result["passes"] = len(list(learner._micro_batches(ro, slice(0, len(ro.rewards)))))
            lp = learner.logprobs(ro)  # pi_old's pass: under FSDP2 every forward is a collective too
            learner.step(ro, slice(0, len(ro.rewards)))
            weights = dict(learner.full_weights())  # every rank draws every tensor
            grads = {name.removeprefix("module."): getattr(p.grad, "full_tensor", lambda g=p.grad: g)()
                     for name, p in learner.model.named_parameters()}  # FSDP2: gathered, a collective too
            if d.main:
                torch.save((weights, grads), f"{out}/step.pt")
            torch.save(lp, f"{out}/logprobs-{rank}.pt")
            result["done"] = True
        elif scenario.startswith("round_skip"):
            import torch

            from rapid_cli.behaviour import BehaviourLogprobs
            from rapid_cli.learner import Learner
            from rapid_cli.policy import load_policy

            model, tok, _ = load_policy(cfg.model, torch.device("cpu"))
            learner = Learner(model, cfg.algo, cfg.optimizer, pad_id=tok.pad_token_id, temperature=1.0,
                              total_steps=2, d=d)
            ro = round_rollouts(distributed.owned_rows(d, len(ROUND), cfg.algo.prompts_per_step))
            grads, result["skipped"] = [], []
            for step in run_update(cfg, learner, BehaviourLogprobs(cfg.algo, d, {}), ro):
                grads.append(torch.cat([getattr(p.grad, "full_tensor", lambda g=p.grad: g)().flatten()
                                        for p in learner.model.parameters()]))
                result["skipped"].append(step.skipped_rows)
            weights = dict(learner.full_weights())
            if d.main:
                torch.save((weights, grads), f"{out}/round.pt")
            result["done"] = True
        elif scenario == "cold_cache":  # each rank a node of its own, with rapid's cache still empty
            import torch

            from rapid_cli.models import resolve_model
            from rapid_cli.policy import load_policy

            os.environ["RAPID_CACHE"] = f"{out}/cache-{rank}"
            result["files"] = sorted(os.listdir(resolve_model(cfg.model)))
            model = load_policy(cfg.model, torch.device("cpu"))[0]
            torch.save(model.state_dict(), f"{out}/cold-{rank}.pt")
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


# 2 prompts per rank, micro-batches of at most 20 positions of the packed forward: rank 0's groups (a 3-token
# prompt and two 8-token completions: 19 positions each) go one at a time, rank 1's (7 each) together
UNEVEN = ["algo.prompts_per_step=4", "algo.packing=true", "algo.micro_batch_tokens=20", "optimizer.lr=1e-3",
          "optimizer.max_grad_norm=null"]


# per group of uneven_rollouts: rank 0's two all 0 (left out), rank 1's one all 0 and one mixed
SKIPPING = [[0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [1.0, 0.0]]


def uneven_rollouts(rank: int | None, rewards: list[list[float]] | None = None):
    """Rank `rank`'s 2 groups of 2 of a 4-group mini-batch (None: all 4): rank 0's completions 8 tokens long,
    rank 1's 2, each group's rewards 1 and 0 (or `rewards[g]`)."""
    from rapid_cli.types import Generations, Problem, Rollouts

    groups = {0: [0, 1], 1: [2, 3], None: [0, 1, 2, 3]}[rank]
    length = [8, 8, 2, 2]
    completions = [[10 + g + i + t for t in range(length[g])] for g in groups for i in range(2)]
    gens = Generations(completions, None, ["length"] * len(completions), [""] * len(completions))
    scores = [r for g in groups for r in (rewards[g] if rewards else [1.0, 0.0])]
    return Rollouts([Problem(str(g), "?", "0") for g in groups], [[1, 2, 3 + g] for g in groups], gens, scores, 2)


# A round of A = 2 steps of 4 groups of 2 (per step 2 groups a rank), in the trainer's order: group g's rewards,
# its completions' length. Rank 0 owns groups 0, 1, 4, 5: every baseline skips all four (all equal), RAPID
# three (the all-one group 4 moves on step 2, where w != 1); rank 1 owns groups 2, 3, 6, 7, a mixed one each
# step (and, for RAPID, the all-one group 7 moving on step 2).
ROUND = [([0.0, 0.0], 8), ([0.0, 0.0], 7), ([1.0, 0.0], 2), ([0.0, 0.0], 3),
         ([1.0, 1.0], 6), ([0.0, 0.0], 8), ([0.0, 1.0], 2), ([1.0, 1.0], 4)]


def round_of_two(algo: str, skip: bool) -> list[str]:
    return [f"algo={algo}", "algo.group_size=2", "algo.prompts_per_step=4", "algo.steps_per_generation=2",
            f"algo.skip_zero_advantage={str(skip).lower()}", *(["algo.kl_beta=0"] if algo == "grpo" else [])]


def round_rollouts(groups: list[int]):
    """The rollouts of ROUND's `groups`, in that order; each completion's tokens differ by group and row."""
    from rapid_cli.types import Generations, Problem, Rollouts

    completions = [[10 + g + i + t for t in range(ROUND[g][1])] for g in groups for i in range(2)]
    gens = Generations(completions, None, ["length"] * len(completions), [""] * len(completions))
    scores = [r for g in groups for r in ROUND[g][0]]
    return Rollouts([Problem(str(g), "?", "0") for g in groups], [[1, 2, 3 + g % 3] for g in groups], gens, scores, 2)


def run_update(cfg, learner, behaviour, ro):
    """The trainer's old_logprobs and update phases (trainer.run_round), yielding each step's stats."""
    ro.moving = learner.moving_rows(ro, behaviour.own_rows(ro))
    ro.old_logprobs, ro.old_rows = behaviour(learner, ro)
    M = cfg.algo.prompts_per_step // learner.d.world
    for i in range(cfg.algo.steps_per_generation):
        yield learner.step(ro, ro.group_slice(i * M, M), audit=i == 0)


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


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_ranks_with_unequal_micro_batch_counts_take_the_one_process_step(tmp_path, parallel):
    """With algo.micro_batch_tokens a rank's share of a mini-batch splits into as many micro-batches as its
    completions' lengths need, so ranks differ; under DDP and FSDP2 every forward/backward is a collective.
    The step and the log-prob pass still equal one process's over the whole mini-batch."""
    import torch

    from rapid_cli.learner import Learner
    from rapid_cli.policy import load_policy

    cfg = compose(TINY + ["device=cpu", *UNEVEN])
    model, tok, _ = load_policy(cfg.model, torch.device("cpu"))  # the ranks find it in the cache
    ranks = run_two(tmp_path, f"uneven_{parallel}")
    assert all(r and r.get("done") for r in ranks), ranks
    assert [r["passes"] for r in ranks] == [2, 1], ranks  # the premise: rank 0 cuts its share in two, rank 1 not
    one = Learner(model, cfg.algo, cfg.optimizer, pad_id=tok.pad_token_id, temperature=1.0, total_steps=1)
    ro = uneven_rollouts(None)
    lp = one.logprobs(ro)
    one.step(ro, slice(0, 8))
    for rank, rows in ((0, slice(0, 4)), (1, slice(4, 8))):
        got = torch.load(tmp_path / f"logprobs-{rank}.pt")
        assert torch.allclose(got, lp[rows, : got.shape[1]], atol=1e-6), rank
    weights, grads = torch.load(tmp_path / "step.pt")
    for name, p in one.model.named_parameters():  # the raw gradient (no clipping), before AdamW amplifies
        # summation-order rounding of near-zero entries (the ddp test's note)
        assert torch.allclose(grads[name], p.grad, rtol=1e-4, atol=1e-9), (name, (grads[name] - p.grad).abs().max())
    start = load_policy(cfg.model, torch.device("cpu"))[0].state_dict()
    assert any(not torch.equal(weights[name], start[name]) for name in start)  # the step did move the weights
    for name, value in one.full_weights():
        assert torch.allclose(weights[name], value, atol=1e-5), name


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_ranks_that_skip_unequally_take_the_one_process_step_without_skipping(tmp_path, parallel):
    """algo.skip_zero_advantage on 2 ranks: rank 0's groups all score 0, so it forwards nothing of its own (its
    passes are uncounted stand-ins joining rank 1's collectives); the step equals one process's over the whole
    mini-batch with skipping off, and no rank hangs."""
    import torch

    from rapid_cli.learner import Learner
    from rapid_cli.policy import load_policy

    cfg = compose(TINY + ["device=cpu", *UNEVEN, "algo.skip_zero_advantage=false"])
    model, tok, _ = load_policy(cfg.model, torch.device("cpu"))
    ranks = run_two(tmp_path, f"uneven_skip_{parallel}")
    assert all(r and r.get("done") for r in ranks), ranks
    one = Learner(model, cfg.algo, cfg.optimizer, pad_id=tok.pad_token_id, temperature=1.0, total_steps=1)
    ro = uneven_rollouts(None, SKIPPING)
    lp = one.logprobs(ro)
    stats = one.step(ro, slice(0, 8))
    assert stats.skipped_rows == 0
    got = torch.load(tmp_path / "logprobs-1.pt")  # rank 1's moving group (its second) as one process's
    assert torch.allclose(got[2:], lp[6:8, : got.shape[1]], atol=1e-6)
    assert (torch.load(tmp_path / "logprobs-0.pt") == 0).all()  # rank 0 computed none of its rows
    weights, grads = torch.load(tmp_path / "step.pt")
    for name, p in one.model.named_parameters():  # as tests/test_numerics.py compares micro-batch cuts
        assert torch.allclose(grads[name], p.grad, rtol=1e-4, atol=1e-8), (name, (grads[name] - p.grad).abs().max())
    assert_same_adam_step(weights, one)


def assert_same_adam_step(weights: dict, one) -> None:
    """`weights` (the ranks' after one AdamW step) equal `one`'s. AdamW's first step moves an entry by
    lr * g / (|g| + eps): an entry whose gradient is within rounding of zero (the ranks sum it in another
    order; the gradient comparison bounds the difference) may move by anything up to lr either way, so the
    weights are compared where |g| is above that rounding, and bounded by the step size elsewhere."""
    import torch

    lr, grads = one.optimizer.param_groups[0]["lr"], dict(one.model.named_parameters(remove_duplicate=False))
    for name, value in one.full_weights():
        firm = grads[name].grad.abs() > 1e-6
        assert torch.allclose(weights[name][firm], value[firm], atol=1e-6), name
        assert ((weights[name] - value).abs() <= 2 * lr).all(), name


def test_a_rank_other_than_0_fills_an_empty_model_cache_with_a_whole_model(tmp_path):
    """Every rank whose node lacks a model in rapid's cache builds it (the tiny model here, the GGUF conversion
    of the default model alike) after the process group exists, when transformers' save_pretrained writes
    weights and config on rank 0 only."""
    import torch

    ranks = run_two(tmp_path, "cold_cache")
    assert ranks[0] == ranks[1], ranks
    assert {"config.json", "model.safetensors"} <= set(ranks[1]["files"]), ranks
    one, two = (torch.load(tmp_path / f"cold-{rank}.pt") for rank in range(2))
    assert one.keys() == two.keys() and all(torch.equal(one[k], two[k]) for k in one)
    assert torch.equal(two["lm_head.weight"], two["model.embed_tokens.weight"])  # the tied head, re-tied on load


def test_fsdp_weights_stream_one_full_tensor_at_a_time(tmp_path):
    for r in run_two(tmp_path, "stream"):
        assert r == {"lazy": True, "first_is_plain_full": True, "names_in_order": True, "equal": True,
                     "was_sharded": True}, r


@pytest.mark.parametrize(("parallel", "algo"), [("ddp", a) for a in ("rapid", "grpo", "pg", "dapo", "dr_grpo")]
                         + [("fsdp", "rapid")])
def test_a_round_of_two_steps_on_ranks_that_skip_unequally_equals_one_process_without_skipping(
        tmp_path, parallel, algo):
    """Issue 28's exactness on 2 gloo ranks, for every algorithm: a whole round of A = 2 steps (so w != 1 on
    step 2 and pi_old is recomputed for it), rank 0 skipping every row (RAPID: all but one group) and rank 1
    one group a step, with packed micro-batches of unequal counts. Each step's raw gradient and the weights
    after the round equal one process's over the whole round with skipping off (test_skipping's tolerances)."""
    import torch

    from rapid_cli.behaviour import BehaviourLogprobs
    from rapid_cli.distributed import Dist
    from rapid_cli.learner import Learner
    from rapid_cli.policy import load_policy
    from test_skipping import assert_same_weights

    ranks = run_two(tmp_path, f"round_skip_{parallel}_{algo}")
    assert all(r and r.get("done") for r in ranks), ranks
    # the premise: the ranks skip unequally (RAPID keeps the all-one groups 4 and 7 on step 2, w != 1 there)
    assert [r["skipped"] for r in ranks] == ([[4, 2], [2, 0]] if algo == "rapid" else [[4, 4], [2, 2]]), ranks
    cfg = compose(TINY + ["device=cpu", *UNEVEN, *round_of_two(algo, False)])
    model, tok, _ = load_policy(cfg.model, torch.device("cpu"))
    one = Learner(model, cfg.algo, cfg.optimizer, pad_id=tok.pad_token_id, temperature=1.0, total_steps=2)
    grads = []
    for step in run_update(cfg, one, BehaviourLogprobs(cfg.algo, Dist(), {}), round_rollouts(list(range(8)))):
        assert step.skipped_rows == 0
        grads.append(torch.cat([p.grad.flatten() for p in one.model.parameters()]))
    weights, got = torch.load(tmp_path / "round.pt")
    # step 1 from the same weights agrees to summation-order rounding (entries near 0 to 1e-4 of the largest: the
    # ranks sum in another order, ~2e-7 seen for DAPO's gradient of 6e-3); step 2 starts from weights that differ
    # by step 1's rounding, which AdamW amplifies
    scale = grads[0].abs().max().item()
    assert torch.allclose(got[0], grads[0], rtol=1e-4, atol=1e-4 * scale), (got[0] - grads[0]).abs().max()
    assert ((got[1] - grads[1]).norm() / grads[1].norm()).item() < 1e-4
    assert_same_weights(dict(one.full_weights()), weights)
