"""Every loss computes what it says through the real update path: the raw (unclipped) gradient of a
mini-batch does not depend on how it is cut into micro-batches, nothing non-finite reaches the weights,
and the logged metrics describe the whole mini-batch."""

from __future__ import annotations

import pytest
import torch

from conftest import TINY, compose
from rapid_cli.algorithms import ALGORITHMS
from rapid_cli.learner import Learner
from rapid_cli.samplers.hf import HFSampler
from rapid_cli.tasks import make_task
from rapid_cli.trainer import PromptStream
from rapid_cli.types import Rollouts, SamplingParams

ALGOS = ["rapid", "grpo", "pg", "dapo", "dr_grpo"]


def rollouts(cfg, model, tok, max_tokens=8) -> Rollouts:
    """One round of real samples from the tiny model, with rewards that leave some groups all equal
    (DAPO drops those) and completions of unequal lengths (token means differ from row means)."""
    task = make_task(cfg.task, seed=0)
    a = cfg.algo
    problems = PromptStream(task.train, 0).next(a.steps_per_generation * a.prompts_per_step)
    prompts = [task.prompt_ids(p, tok) for p in problems]
    gens = HFSampler(model, tok).generate(prompts, SamplingParams(n=a.group_size, max_tokens=max_tokens, seed=3))
    for i in range(len(gens)):  # a random model rarely stops: cut rows to unequal lengths (still real prefixes)
        n = max_tokens - (3 * i) % 7
        gens.completion_ids[i], gens.logprobs[i] = gens.completion_ids[i][:n], gens.logprobs[i][:n]
    rewards = [float(i % 3 == 0) for i in range(len(gens))]  # groups of 2: [1,0] [0,1] [0,0] [1,0]
    return Rollouts(problems, prompts, gens, rewards, a.group_size)


def learner(cfg, model, tok, total_steps: int = 1) -> Learner:
    return Learner(model, cfg.algo, cfg.optimizer, pad_id=tok.pad_token_id, temperature=1.0,
                   total_steps=total_steps)


def shifted(ro: Rollouts, logprobs: torch.Tensor, size: float) -> torch.Tensor:
    """Log-probs [B, T] moved by a fixed +-size pattern, so ratios land on both sides of the PPO clip."""
    i, j = torch.meshgrid(torch.arange(logprobs.shape[0]), torch.arange(logprobs.shape[1]), indexing="ij")
    return torch.where(ro.completion_mask > 0, logprobs + size * ((i + j) % 3 - 1), 0.0)


def raw_gradient(model, cfg, ro, old, ref, micro: int, tok, tokens: int | None = None) -> torch.Tensor:
    """The accumulated gradient of one real learner step, read before any clipping could act
    (optimizer.max_grad_norm=null) and after the step (which does not touch .grad). `tokens`: micro-batches
    cut by algo.micro_batch_tokens instead of `micro` rows."""
    cfg.algo.micro_batch_size, cfg.algo.micro_batch_tokens = micro, tokens
    ro.old_logprobs, ro.ref_logprobs = old, ref
    learner(cfg, model, tok).step(ro, ro.group_slice(0, cfg.algo.prompts_per_step))
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


@pytest.mark.parametrize("algo", ALGOS)
def test_unclipped_gradient_does_not_depend_on_the_micro_batch_size(tiny_policy, algo):
    model, tok = tiny_policy
    state = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = compose(TINY + [f"algo={algo}", "algo.group_size=2", "algo.prompts_per_step=4", "algo.steps_per_generation=1",
                          "optimizer.max_grad_norm=null", "optimizer.lr=1e-3"])
    ro = rollouts(cfg, model, tok)
    assert len({len(c) for c in ro.generations.completion_ids}) > 1  # unequal lengths: token and row means differ
    now = learner(cfg, model, tok).logprobs(ro)
    old = shifted(ro, now, 0.15)
    ref = shifted(ro, now, -0.3) if cfg.algo.kl_beta else None
    try:
        grads = {}
        for micro in (2, 4, 8):  # 4 micro-batches of one group, 2 of two groups, the whole mini-batch at once
            model.load_state_dict(state)
            grads[micro] = raw_gradient(model, cfg, ro, old, ref, micro, tok)
        # by tokens: every group alone, and a budget of the first two groups' positions (runs of unequal size)
        two = learner(cfg, model, tok)._positions(ro, ro.group_slice(0, 2))
        for budget, first in ((1, 2), (two, 4)):
            model.load_state_dict(state)
            grads["tokens", budget] = raw_gradient(model, cfg, ro, old, ref, 8, tok, tokens=budget)
            cuts = [mb.stop - mb.start for mb in learner(cfg, model, tok)._micro_batches(ro, ro.group_slice(0, 4))]
            assert sum(cuts) == 8 and cuts[0] == first and all(c % 2 == 0 for c in cuts), cuts
    finally:
        model.load_state_dict(state)
    assert grads[8].norm() > 1e-3
    for micro in (2, 4, ("tokens", 1), ("tokens", two)):
        rel = ((grads[micro] - grads[8]).norm() / grads[8].norm()).item()
        assert rel < 2e-6, (algo, micro, rel)
        assert torch.allclose(grads[micro], grads[8], rtol=1e-4, atol=1e-8)


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("junk", [-100.0, float("-inf")])
def test_padding_never_turns_a_loss_or_its_gradient_into_nan(algo, junk):
    """Reference and old log-probs are padded with 0 while the policy's log-prob of a pad target can be
    -100 (SmolLM2 at temperature 0.2) or -inf: exp(0 - (-100)) overflows, and inf * 0 = NaN."""
    cfg = compose([f"algo={algo}"])
    loss_fn = ALGORITHMS[cfg.algo.name].loss
    opts = ALGORITHMS[cfg.algo.name].loss_options(cfg.algo)
    torch.manual_seed(0)
    real = -torch.rand(4, 3) * 2
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]], dtype=torch.float32)
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0])
    extra = lambda: {"ref_logprobs": torch.full((4, 3), -0.5) * mask} if cfg.algo.kl_beta else {}  # noqa: E731
    clean = real.clone().requires_grad_(True)
    want, _ = loss_fn(clean, real * mask - 0.1 * mask, mask, rewards, 2, **opts, **extra())
    want.backward()
    padded = torch.where(mask > 0, real, torch.full_like(real, junk)).requires_grad_(True)
    got, metrics = loss_fn(padded, real * mask - 0.1 * mask, mask, rewards, 2, **opts, **extra())
    got.backward()
    assert torch.isfinite(got) and torch.isfinite(padded.grad).all()
    assert got.item() == pytest.approx(want.item(), rel=1e-6, abs=1e-8)
    assert torch.allclose(padded.grad, clean.grad * mask, atol=1e-8)
    assert all(v == v for v in metrics.values())  # no NaN metric either


def test_a_non_finite_step_is_skipped_and_leaves_weights_and_optimizer_alone(tiny_policy):
    """A broken engine hands NaN log-probs: the loss is NaN, the step is skipped (no weight, optimizer or
    schedule change) and counted; the next finite step goes through."""
    model, tok = tiny_policy
    state = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = compose(TINY + ["algo.group_size=2", "algo.prompts_per_step=2", "algo.steps_per_generation=1"])
    ro = rollouts(cfg, model, tok)
    lrn = learner(cfg, model, tok, total_steps=4)
    good = lrn.logprobs(ro)
    broken = torch.where(ro.completion_mask > 0, float("nan"), 0.0)
    opt, sched = lrn.optimizer, lrn.scheduler
    try:
        ro.old_logprobs = broken
        out = lrn.step(ro, ro.group_slice(0, 2))
        for k, v in model.state_dict().items():
            assert torch.equal(v, state[k]), k
        assert out.skipped == 1 and out.loss != out.loss
        assert not opt.state and sched.last_epoch == 0
        ro.old_logprobs = shifted(ro, good, 0.1)
        out = lrn.step(ro, ro.group_slice(0, 2))
        assert out.skipped == 0 and sched.last_epoch == 1
        assert all(torch.isfinite(p).all() for p in model.parameters())
        assert any(not torch.equal(v, state[k]) for k, v in model.state_dict().items())
    finally:
        model.load_state_dict(state)


def test_skipped_steps_in_a_row_stop_the_run_naming_the_round():
    from rapid_cli.errors import RapidError
    from rapid_cli.trainer import SkipGuard

    guard = SkipGuard(limit=3)
    guard.check([True, False, True], rnd=1)  # a good step resets the count
    guard.check([True], rnd=2)
    with pytest.raises(RapidError, match=r"^round 3: 3 optimizer steps in a row .*optimizer.max_skipped_steps"):
        guard.check([True, False], rnd=3)


def test_a_run_whose_steps_keep_failing_stops_before_saving_anything(tmp_path):
    """A learning rate of 1e30 turns the weights into +-1e30 on the first step that has a gradient; every
    later step's loss is NaN. The run stops with one line naming the round, before the round's checkpoint
    or metrics row is written, so nothing from the dead model reaches the disk."""
    from rapid_cli.errors import RapidError
    from rapid_cli.trainer import train

    cfg = compose(TINY + ["algo.steps_per_generation=4", "train.rounds=2", "train.save_every=1", "eval.at_start=false",
                          "optimizer.lr=1e30", "optimizer.max_skipped_steps=2"])
    with pytest.raises(RapidError, match=r"^round 1: 2 optimizer steps in a row .*non-finite"):
        train(cfg, tmp_path)
    assert not list((tmp_path / "checkpoints").glob("round-*"))
    assert not (tmp_path / "metrics.jsonl").exists() or "\"round\": 1" not in (tmp_path / "metrics.jsonl").read_text()


def test_ess_is_that_of_the_whole_mini_batch(tiny_policy):
    """iw/ess is (sum w)^2 / sum w^2 over every row of the mini-batch, whatever the micro-batch size."""
    import math

    model, tok = tiny_policy
    state = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = compose(TINY + ["algo.group_size=2", "algo.prompts_per_step=4", "algo.steps_per_generation=1"])
    ro = rollouts(cfg, model, tok)
    now = learner(cfg, model, tok).logprobs(ro)
    ro.old_logprobs = shifted(ro, now, 0.4)
    w = [math.exp(x) for x in (now - ro.old_logprobs).double().sum(-1).tolist()]  # padding is 0 in both
    want = sum(w) ** 2 / sum(x * x for x in w)
    try:
        for micro in (2, 8):
            model.load_state_dict(state)
            cfg.algo.micro_batch_size = micro
            out = learner(cfg, model, tok).step(ro, ro.group_slice(0, 4))
            assert out.ess == pytest.approx(want, rel=1e-4), micro
    finally:
        model.load_state_dict(state)
    assert want < 7.5  # the weights are uneven enough for the per-micro-batch mean to differ


def test_staleness_stays_finite_when_a_weight_underflows():
    from rapid_cli.algorithms.losses import rapid_loss

    old = torch.tensor([[0.0, 0.0], [50.0, 60.0]])  # row 1: log w = -110, w = exp(-110) underflows to 0 in float32
    lp = torch.zeros(2, 2)
    _, m = rapid_loss(lp, old, torch.ones(2, 2), torch.tensor([1.0, 0.0]), group_size=2)
    assert m["staleness"] == pytest.approx(110 / 2)  # mean |log w~| of [0, -110]


def test_logged_learning_rate_is_the_one_the_last_step_used(tmp_path):
    """Cosine over 2 steps: step 0 uses lr, step 1 uses lr/2, and after it the scheduler points at 0."""
    from rapid_cli.trainer import train

    cfg = compose(TINY + ["train.rounds=1", "optimizer.schedule=cosine", "optimizer.lr=1e-4", "eval.at_start=false",
                          "train.save_every=0"])
    out = train(cfg, tmp_path)
    assert out["train/lr"] == pytest.approx(0.5e-4)


@pytest.mark.parametrize("algo", ["grpo", "pg", "dapo", "dr_grpo"])
def test_baselines_honour_eps_null_as_no_clip(algo):
    """algo.eps=null is the unclipped objective for the baselines too (it used to become 0.2)."""
    cfg = compose([f"algo={algo}", "algo.eps=null", "algo.eps_high=null"])
    loss_fn = ALGORITHMS[cfg.algo.name].loss
    opts = ALGORITHMS[cfg.algo.name].loss_options(cfg.algo)
    if "kl_beta" in opts:
        opts["kl_beta"] = 0.0  # the clip alone is under test
    lp = torch.full((2, 1), 0.5, requires_grad=True)  # ratio e^0.5 = 1.65, far outside a 0.2 clip
    loss, metrics = loss_fn(lp, torch.zeros(2, 1), torch.ones(2, 1), torch.tensor([1.0, 0.0]), 2, **opts)
    loss.backward()
    assert lp.grad[0, 0] < 0 and lp.grad[1, 0] > 0  # both still pushed by their advantages
    assert metrics["ppo_clip_frac"] == 0


def test_a_model_with_dropout_trains_without_it(tmp_path):
    """A checkpoint saved with dropout > 0: the loaded policy gives the same log-probs in train mode (the
    update) as in eval mode (the sampler and the pi_old recompute), so the first step's weights are 1."""
    from rapid_cli.policy import completion_logprobs, load_policy, pack

    cfg = compose(TINY)
    model, tok, _ = load_policy(cfg.model, torch.device("cpu"))
    model.config.attention_dropout = 0.5
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    cfg.model.path = str(tmp_path)
    model, tok, _ = load_policy(cfg.model, torch.device("cpu"))
    batch = pack([[5, 6, 7, 8]] * 2, [[9, 10, 11, 12, 13]] * 2, tok.pad_token_id, "cpu")
    with torch.no_grad():
        model.eval()
        evaluated = completion_logprobs(model, batch, 1.0)
        model.train()
        trained = [completion_logprobs(model, batch, 1.0) for _ in range(3)]
    for lp in trained:
        assert torch.equal(lp, evaluated)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_training_low_precision_weights_is_refused_in_one_line(tmp_path, dtype):
    """AdamW on bf16 weights at lr 1e-6 rounds most updates away: `rapid train` refuses it and names the fix."""
    from rapid_cli.errors import RapidError
    from rapid_cli.trainer import train

    with pytest.raises(RapidError, match=rf"^model.dtype={dtype} .*train.mixed_precision=bf16") as err:
        train(compose(TINY + [f"model.dtype={dtype}", "train.rounds=1"]), tmp_path)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "metrics.jsonl").exists()


AMX_CPU = "processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
AVX2_CPU = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx2 fma f16c\n"


def test_fast_bf16_is_read_from_the_cpus_flags(tmp_path):
    from rapid_cli.hardware import bf16_units, fast_bf16

    (tmp_path / "amx").write_text(AMX_CPU)
    (tmp_path / "avx2").write_text(AVX2_CPU)
    assert fast_bf16(False, tmp_path / "amx")
    assert not fast_bf16(False, tmp_path / "avx2")
    assert not fast_bf16(False, tmp_path / "missing")  # not Linux: no claim of fast bf16
    assert bf16_units(False, tmp_path / "amx") == "amx_bf16, avx512_bf16"


def test_precision_auto_is_bf16_compute_with_fp32_masters_where_the_device_has_bf16_units():
    from rapid_cli.config import resolve_precision

    cfg = compose(["logger.live=false"])
    assert (cfg.train.mixed_precision, cfg.sampler.dtype) == ("auto", "auto")
    assert resolve_precision(cfg, cuda=True, bf16=True) == ("bf16", "bfloat16")
    assert resolve_precision(cfg, cuda=False, bf16=True) == ("bf16", "bfloat16")  # AMX / AVX512-BF16 CPUs
    assert resolve_precision(cfg, cuda=False, bf16=False) == ("none", "float32")
    assert resolve_precision(cfg, cuda=True, bf16=False) == ("none", "float32")  # a V100 or T4
    explicit = compose(TINY + ["train.mixed_precision=none", "sampler.dtype=float32"])
    assert resolve_precision(explicit, cuda=True, bf16=True) == ("none", "float32")  # the fp32 path stays selectable
    assert resolve_precision(compose(["train.mixed_precision=bf16"]), cuda=False, bf16=True) == ("bf16",
                                                                                           "bfloat16")


@pytest.mark.parametrize("key", ["train.mixed_precision=bf16", "sampler.dtype=bfloat16"])
def test_explicit_bf16_without_bf16_units_is_one_line_before_anything_runs(tmp_path, monkeypatch, key):
    from rapid_cli import hardware
    from rapid_cli.errors import RapidError
    from rapid_cli.trainer import train

    (tmp_path / "cpuinfo").write_text(AVX2_CPU)
    monkeypatch.setattr(hardware, "CPUINFO", tmp_path / "cpuinfo")
    with pytest.raises(RapidError, match=rf"^{key}: this CPU has no fast bf16 units .* leave .*=auto") as err:
        train(compose(TINY + [key, "train.rounds=1"]), tmp_path / "run")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_auto_precision_trains_in_bf16_on_a_cpu_with_bf16_units(tmp_path, monkeypatch, capsys):
    from rapid_cli import hardware
    from rapid_cli.trainer import train

    (tmp_path / "cpuinfo").write_text(AMX_CPU)
    monkeypatch.setattr(hardware, "CPUINFO", tmp_path / "cpuinfo")
    auto = TINY + ["train.mixed_precision=auto", "sampler.dtype=auto", "train.rounds=1", "eval.at_start=false"]
    train(compose(auto), tmp_path / "run")
    assert "bf16 compute on cpu" in capsys.readouterr().out
    (tmp_path / "cpuinfo").write_text(AVX2_CPU)
    train(compose(auto), tmp_path / "run2")
    assert "fp32 on cpu" in capsys.readouterr().out


def test_vllm_sampler_logprobs_at_top_p_below_one_are_refused_in_one_line():
    from rapid_cli.errors import RapidError
    from rapid_cli.validation import validate

    with pytest.raises(RapidError, match=r"^algo.old_logprobs=sampler with sampler=vllm and sampler.top_p=0.9: "):
        validate(compose(TINY + ["sampler=vllm", "sampler.top_p=0.9", "algo.old_logprobs=sampler"]))
    validate(compose(TINY + ["sampler=vllm", "sampler.top_p=1.0", "algo.old_logprobs=sampler"]))
    validate(compose(TINY + ["sampler=hf", "sampler.top_p=0.9", "algo.old_logprobs=sampler"]))  # HF's are untruncated


def _trust(run_dir, rnd: int) -> dict:
    from rapid_cli.checkpoint import load_state

    return load_state(run_dir / "checkpoints" / f"round-{rnd:06d}")["sampler_trust"]


def test_auto_audits_every_round_trusts_only_after_a_sync_and_forgets_on_changed_settings(tmp_path):
    """algo.old_logprobs=auto with the fp32 HF sampler (log-probs equal to the trainer's): round 1 is
    audited but cannot earn trust (nothing synced yet), round 2 earns it, every round logs the audit; a
    resume with the same settings keeps the trust, one with another top_p drops it."""
    import json

    from rapid_cli.trainer import train

    AUDIT_KEY = "iw/sampler_seq_logw_gap_max"  # noqa: N806
    base = TINY + ["train.save_every=1", "train.keep_checkpoints=0", "eval.at_start=false", "eval.limit=2"]
    train(compose(base + ["train.rounds=3"]), tmp_path)
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows if AUDIT_KEY in r] == [1, 2, 3]
    assert all(r[AUDIT_KEY] < 1e-4 and r["iw/sampler_logprob_gap_max"] < 1e-5 for r in rows if r["round"])
    assert [_trust(tmp_path, r)["trusted"] for r in (1, 2, 3)] == [False, True, True]
    same = tmp_path / "same"
    changed = tmp_path / "changed"
    for run_dir, extra in ((same, []), (changed, ["sampler.top_p=0.95"])):
        __import__("shutil").copytree(tmp_path / "checkpoints", run_dir / "checkpoints")
        train(compose(base + ["train.rounds=4", "train.resume=auto", *extra]), run_dir)
    assert _trust(same, 4)["trusted"] is True
    assert _trust(changed, 4) == {"trusted": False, "settings": {**_trust(tmp_path, 3)["settings"], "top_p": 0.95}}


def test_the_audit_measures_the_error_in_log_w_and_decides_on_it(tiny_policy):
    """A one-signed per-token bias of 9e-4 (which a per-token check at 1e-3 lets through) is a log w error
    of 9e-4 x length: the audit reports it per sequence, and auto refuses, or revokes, trust on it."""
    from rapid_cli.behaviour import BehaviourLogprobs
    from rapid_cli.distributed import Dist
    from rapid_cli.learner import AUDIT_KEY

    model, tok = tiny_policy
    state = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = compose(TINY + ["algo.group_size=2", "algo.prompts_per_step=2", "algo.sampler_logw_tol=5e-3"])
    ro = rollouts(cfg, model, tok)
    lrn = learner(cfg, model, tok)
    now = lrn.logprobs(ro)
    ro.sampler_logprobs = torch.where(ro.completion_mask > 0, now - 9e-4, 0.0)  # a biased sampler's
    try:
        step = lrn.step(ro, ro.group_slice(0, 2), audit=True)
    finally:
        model.load_state_dict(state)
    audit = step.audit.metrics()
    longest = max(len(c) for c in ro.generations.completion_ids[:4])
    assert audit[AUDIT_KEY] == pytest.approx(9e-4 * longest, rel=1e-2)
    assert audit["iw/sampler_logprob_gap_max"] == pytest.approx(9e-4, rel=1e-2)
    behaviour = BehaviourLogprobs(cfg.algo, Dist(), {"sampler": "hf"})
    for _ in range(3):  # after syncs too: the sequence-level gap 9e-4 x 8 > 5e-3 keeps it untrusted
        behaviour.after_round(audit)
        assert not behaviour.trusted
    trusted = BehaviourLogprobs(cfg.algo, Dist(), {"sampler": "hf"}, {"trusted": True, "settings": {"sampler": "hf"}})
    assert trusted.trusted
    trusted.after_round(audit)
    assert not trusted.trusted  # revoked
    trusted.after_round({AUDIT_KEY: 1e-4})
    assert trusted.trusted  # earned back (a sync has happened since)
