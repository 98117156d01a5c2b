"""Data-parallel RAPID on CPU with the gloo backend: 2 processes started by torchrun give the same
losses and weights over 4 rounds as 1 process with the same global batch (DDP and FSDP2), and a rank that dies
ends the job with torchrun's failure report instead of a hang."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import RAPID, REPO, TINY, compose

pytestmark = pytest.mark.slow


ROUNDS = 4
QUESTION = "What is 45 + 3?"


def learnable_data(folder: Path) -> str:
    """One question whose reference answer is the number the random tiny model writes most often, so
    some rewards are 1 and the update really moves the weights (a random model rarely hits "48"); scored by
    `numeric_match` (the last number anywhere: task=gsm8k's rule gives a completion cut off at max_tokens nothing
    unless it states its answer, which a random model never does)."""
    import collections

    from rapid_cli.policy import load_policy
    from rapid_cli.rewards.answers import extract_answer
    from rapid_cli.samplers.hf import HFSampler
    from rapid_cli.types import SamplingParams

    path = folder / "mode"  # train.jsonl and test.jsonl: every row trains (a single file would be split)
    if not path.exists():
        model, tok, _ = load_policy(compose(TINY).model, torch.device("cpu"))
        ids = tok.apply_chat_template([{"role": "user", "content": QUESTION}], add_generation_prompt=True,
                                      tokenize=True)
        prompt = list(ids["input_ids"] if hasattr(ids, "keys") else ids)  # task=custom's prompt: the question alone
        texts = HFSampler(model, tok).generate([prompt],
                                               SamplingParams(n=128, temperature=1.0, max_tokens=16, seed=7)).texts
        answer = collections.Counter(a for a in map(extract_answer, texts) if a).most_common(1)[0][0]
        path.mkdir()
        for split in ("train", "test"):
            (path / f"{split}.jsonl").write_text(
                "".join(json.dumps({"question": QUESTION, "answer": answer}) + "\n" for _ in range(40)))
    return str(path)


def overrides(tmp_path, rounds=ROUNDS) -> list[str]:
    keep = [o for o in TINY if not o.startswith(("task=", "train.rounds", "algo.group_size", "algo.micro_batch_size",
                                                  "sampler.max_tokens"))]
    return keep + ["task=custom", f"task.data_path={learnable_data(tmp_path)}", "task.prompt_field=question",
                   "reward.functions=[{_target_: rapid_cli.rewards.numeric_match}]", "algo.group_size=8",
                   "algo.micro_batch_size=8", "sampler.max_tokens=16", f"train.rounds={rounds}", "optimizer.lr=1e-3",
                   "train.save_every=0", "device=cpu"]


def env():
    return {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}


def torchrun(nproc: int, args: list[str], **kw) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", "-m",
           "rapid_cli", "train", *args]
    kw.setdefault("env", env())
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def weights(run_dir: Path, rounds: int = ROUNDS) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "checkpoints" / f"round-{rounds:06d}" / "model" / "model.safetensors")


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The reference: one plain process, same global batch."""
    tmp = tmp_path_factory.mktemp("single")
    run_dir = tmp / "run"
    proc = subprocess.run([RAPID, "train", *overrides(tmp), f"hydra.run.dir={run_dir}"], cwd=REPO, env=env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return tmp, run_dir


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_processes_match_one(single, parallel):
    tmp, ref_dir = single
    run_dir = tmp / f"two-{parallel}"
    proc = torchrun(2, [*overrides(tmp), f"train.parallel={parallel}", f"hydra.run.dir={run_dir}"])
    out = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, out
    a, b = rows(ref_dir), rows(run_dir)
    assert [r["round"] for r in a] == [r["round"] for r in b]
    assert sum(r.get("reward/mean", 0) for r in a) > 0  # real learning signal went through the update
    for ra, rb in zip(a, b, strict=True):
        for key in ("train/loss", "reward/mean", "train/grad_norm", "iw/mean", "eval/pass@1", "perf/samples"):
            if key in ra:
                assert rb[key] == pytest.approx(ra[key], rel=1e-4, abs=1e-5), (ra["round"], key)
    wa, wb = weights(ref_dir), weights(run_dir)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-5), k


@pytest.mark.parametrize("lora", ["default", "qlora"])
def test_lora_on_two_ddp_ranks_matches_one_process(tmp_path, lora):
    """DDP with LoRA: only the adapters are in DDP's buckets (the frozen base takes no gradient), and the two
    ranks' adapters end where one process's do; with QLoRA's 4-bit base too (each rank packs the same weights)."""
    lora = [*overrides(tmp_path, rounds=2), f"lora={lora}", "lora.r=4", "train.save_every=2"]
    one, two = tmp_path / "one", tmp_path / "two"
    proc = subprocess.run([RAPID, "train", *lora, f"hydra.run.dir={one}"], cwd=REPO, env=env(), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run = torchrun(2, [*lora, "train.parallel=ddp", f"hydra.run.dir={two}"])
    out = run.communicate(timeout=600)[0]
    assert run.returncode == 0, out
    assert any(r.get("train/grad_norm", 0) > 0 for r in rows(one))
    for ra, rb in zip(rows(one), rows(two), strict=True):
        for key in ("train/loss", "reward/mean", "train/grad_norm"):
            if key in ra:
                assert rb[key] == pytest.approx(ra[key], rel=1e-4, abs=1e-5), (ra["round"], key)
    adapter = Path("checkpoints", "round-000002", "adapter", "adapter_model.safetensors")
    wa, wb = load_file(one / adapter), load_file(two / adapter)
    assert wa.keys() == wb.keys() and any(".lora_B." in k and v.abs().max() > 0 for k, v in wa.items())
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-5), k


def test_dapo_on_two_ranks_matches_one_process_taking_the_whole_mini_batch(tmp_path):
    """DAPO's token mean spans the whole mini-batch: 2 DDP ranks holding one group each take the same step
    as one process that puts both groups through a single forward pass, even when one rank's group is
    dropped (all rewards equal) or holds fewer tokens than the other."""
    rounds = 2
    dapo = [o for o in overrides(tmp_path, rounds=rounds)
            if not o.startswith("algo.steps_per_generation")] + ["algo=dapo"]
    one, two = tmp_path / "one", tmp_path / "two"
    proc = subprocess.run([RAPID, "train", *dapo, "algo.micro_batch_size=16", f"hydra.run.dir={one}"], cwd=REPO,
                          env=env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run = torchrun(2, [*dapo, "train.parallel=ddp", f"hydra.run.dir={two}"])
    out = run.communicate(timeout=600)[0]
    assert run.returncode == 0, out[-4000:]
    a, b = rows(one), rows(two)
    assert any(0 < r.get("train/groups_dropped_frac", 0) < 1 for r in a)  # a round where one rank's group is dropped
    for ra, rb in zip(a, b, strict=True):
        for key in ("train/loss", "reward/mean", "train/grad_norm"):
            if key in ra:
                assert rb[key] == pytest.approx(ra[key], rel=1e-4, abs=1e-6), (ra["round"], key)
    wa, wb = weights(one, rounds), weights(two, rounds)
    for k in wa:  # the ddp test's tolerance: AdamW divides by sqrt(v), so summation-order rounding of a
        # near-zero gradient entry moves that weight by up to ~2e-6 at lr 1e-3 (seen on 2026-12-03's machine)
        assert torch.allclose(wa[k], wb[k], atol=1e-5), k


def test_fsdp_run_resumes_exactly(single):
    """2 FSDP rounds, a checkpoint (optimizer state gathered from the shards), then a resumed run to round
    4: the same losses and final weights as one process running all 4 rounds."""
    tmp, ref_dir = single
    run_dir = tmp / "fsdp-resumed"
    for rounds, extra in ((2, []), (ROUNDS, ["train.resume=auto"])):
        proc = torchrun(2, [*overrides(tmp, rounds=rounds), "train.parallel=fsdp", *extra, f"hydra.run.dir={run_dir}"])
        out = proc.communicate(timeout=600)[0]
        assert proc.returncode == 0, out[-4000:]
    assert "resuming" in out
    a, b = rows(ref_dir), rows(run_dir)
    assert [r["round"] for r in b] == [r["round"] for r in a]
    for ra, rb in zip(a, b, strict=True):
        for key in ("train/loss", "reward/mean", "train/grad_norm", "eval/pass@1"):
            if key in ra:
                assert rb[key] == pytest.approx(ra[key], rel=1e-4, abs=1e-5), (ra["round"], key)
    wa, wb = weights(ref_dir), weights(run_dir)
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-5), k


@pytest.mark.vllm
def test_two_processes_with_a_vllm_engine_each(tmp_path):
    """Each rank runs its own in-process vLLM engine next to the DDP trainer, and every engine follows
    its rank's weights: the trainer's recomputed log-probs match the engine's after each sync."""
    from rapid_cli.samplers.vllm import vllm_available

    if not vllm_available():
        pytest.skip("vLLM not installed")
    run_dir = tmp_path / "run"
    args = [o for o in overrides(tmp_path, rounds=3) if o != "sampler=hf"]
    proc = torchrun(2, [*args, "sampler=vllm", "sampler.kv_cache_gb=0.25", "algo.old_logprobs=recompute",
                        "train.parallel=ddp", f"hydra.run.dir={run_dir}"])
    out = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, out[-4000:]
    rounds = [r for r in rows(run_dir) if r["round"] > 0]
    assert [r["round"] for r in rounds] == [1, 2, 3]
    assert rounds[-1]["perf/samples"] == 3 * 2 * 2 * 8  # rounds x A x M x G over both ranks
    for r in rounds:  # the max over both ranks' engines
        assert r["iw/sampler_logprob_gap_max"] < 1e-3, r
    assert sum(r["reward/mean"] for r in rounds) > 0


@pytest.mark.vllm
def test_one_fsdp_process_with_a_vllm_engine_ends_cleanly(tmp_path):
    """torchrun with 1 process: the engine's groups hang off the trainer's process group, which the trainer
    destroys at the end; the engine's own shutdown then failed ("Invalid process group specified", exit 1).
    The FSDP weights reach the engine streamed (stream_full_weights): the audit gap stays at fp32 rounding."""
    from rapid_cli.samplers.vllm import vllm_available

    if not vllm_available():
        pytest.skip("vLLM not installed")
    run_dir = tmp_path / "run"
    args = [o for o in overrides(tmp_path, rounds=2) if o != "sampler=hf"]
    proc = torchrun(1, [*args, "sampler=vllm", "sampler.kv_cache_gb=0.25", "train.parallel=fsdp",
                        f"hydra.run.dir={run_dir}"])
    out = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, out[-4000:]
    rounds = [r for r in rows(run_dir) if r["round"] > 0]
    assert [r["round"] for r in rounds] == [1, 2] and rounds[-1]["iw/sampler_logprob_gap_max"] < 1e-3, rounds


def _worker(torchrun_pid: int, rank: int) -> int:
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            status = (proc / "status").read_text()
            environ = (proc / "environ").read_bytes()
        except OSError:
            continue
        ppid = int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))
        if ppid == torchrun_pid and f"RANK={rank}\0".encode() in environ and b"LOCAL_RANK" in environ:
            return int(proc.name)
    raise AssertionError(f"no rank-{rank} worker under torchrun {torchrun_pid}")


def test_a_dead_rank_ends_the_job_with_a_clear_message(tmp_path):
    run_dir = tmp_path / "run"
    proc = torchrun(2, [*overrides(tmp_path, rounds=200), "train.parallel=ddp", "train.dist_timeout_s=60",
                        f"hydra.run.dir={run_dir}"])
    start = time.time()
    while not (run_dir / "metrics.jsonl").exists() or len(rows(run_dir)) < 2:
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() - start < 300
        time.sleep(0.1)
    os.kill(_worker(proc.pid, 1), signal.SIGKILL)
    out = proc.communicate(timeout=180)[0]  # torchrun notices and stops rank 0: no hang
    assert proc.returncode != 0
    assert "rank" in out.lower() and ("SIGKILL" in out or "exitcode" in out), out[-2000:]


def test_rank_0_evaluating_and_saving_longer_than_the_collective_timeout_is_no_failure(tmp_path):
    """Rank 0 evaluates and saves alone; the other rank waits at a gloo barrier without a practical time limit
    (distributed.line_up), not inside its next collective, which train.dist_timeout_s (here 1 s) would end."""
    run_dir = tmp_path / "run"
    proc = torchrun(2, [*overrides(tmp_path, rounds=1), "train.parallel=ddp", "train.dist_timeout_s=1", "eval.limit=40",
                        "eval.n=32", "eval.k=[1]", "train.save_every=1", f"hydra.run.dir={run_dir}"])
    out = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, out[-3000:]
    evals = [r["time/eval"] for r in rows(run_dir) if "time/eval" in r]
    assert len(evals) == 2 and min(evals) > 1, evals  # each evaluation outlasted the 1 s timeout (3-4 s when quiet)


LATE = "import os\nif os.environ.get('RANK') == '1':\n    import time\n    import {module} as where\n" \
       "    slow = where.{owner}{name}\n    def late(*args, **kwargs):\n        time.sleep(4)\n" \
       "        return slow(*args, **kwargs)\n    where.{owner}{name} = late\n"


@pytest.mark.parametrize(("parallel", "slow"), [
    ("ddp", "torch.distributed:init_process_group"),
    *[(p, s) for p in ("ddp", "fsdp")
      for s in ("rapid_cli.distributed:wrap", "rapid_cli.samplers.hf:HFSampler.generate")],
])
def test_a_rank_slower_than_the_collective_timeout_is_no_failure(tmp_path, parallel, slow):
    """Ranks start, load the task and model, and sample and score their prompts, each on its own, so they reach
    the process group's rendezvous and the next collective (DDP's parameter check, FSDP2's sharding, the pi_old
    pass) at different times; a busy machine made that gap longer than train.dist_timeout_s and killed a healthy
    job (CI on 2026-12-07: gloo's connect at init_process_group timed out). Here rank 1 arrives 4 s late, at the
    rendezvous, at the parallel wrapper or from sampling, with a 1 s timeout."""
    module, attr = slow.split(":")
    owner, _, name = attr.rpartition(".")
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(LATE.format(module=module, owner=owner + "." if owner else "", name=name))
    run_dir = tmp_path / "run"
    proc = torchrun(2, [*overrides(tmp_path, rounds=1), f"train.parallel={parallel}", "train.dist_timeout_s=1",
                        f"hydra.run.dir={run_dir}"], env={**env(), "PYTHONPATH": str(hook)})
    out = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, out[-3000:]
    assert [r["round"] for r in rows(run_dir)] == [0, 1]


def test_launch_mistakes_are_one_line(monkeypatch):
    from rapid_cli import distributed
    from rapid_cli.errors import RapidError

    def setup(cfg):
        return distributed.setup(cfg.train, cfg.algo.prompts_per_step, cfg.device)

    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(RapidError, match="torchrun --nproc-per-node"):
        setup(compose(["train.parallel=ddp"]))
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RapidError, match="train.parallel=none"):
        setup(compose([]))
    assert distributed.owned_rows(distributed.Dist(0, 2), 8, 4) == [0, 1, 4, 5]
