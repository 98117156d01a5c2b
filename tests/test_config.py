"""Every shipped YAML composes and validates; bad overrides fail at start with one clear line."""


import pytest
from omegaconf import OmegaConf

from conftest import REPO, TINY, compose, rapid
from rapid_cli.errors import RapidError
from rapid_cli.validation import validate, validate_data

GROUPS = ["model", "task", "sampler", "optimizer", "algo", "experiment"]


def shipped(group):
    return sorted(p.stem for p in (REPO / "conf" / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in shipped(g)])
def test_every_yaml_composes_and_validates(group, option):
    cfg = compose([f"{group}={option}"])
    validate(cfg)
    OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)  # no MISSING left anywhere


def test_every_yaml_starts_with_a_comment():
    for path in (REPO / "conf").rglob("*.yaml"):
        first = path.read_text().lstrip().splitlines()[0]
        assert first.startswith("#"), f"{path} should start with a comment giving the command that uses it"


def test_typo_and_wrong_type_fail_at_compose_time():
    with pytest.raises(Exception, match="fooo"):
        compose(["algo.fooo=1"])
    with pytest.raises(Exception, match="group_size"):
        compose(["algo.group_size=many"])
    with pytest.raises(Exception, match=r"optimizer.schedule|expected one of \[constant, cosine\]"):
        compose(["optimizer.schedule=linear"])


@pytest.mark.parametrize(
    "override,needle",
    [
        ("algo.group_size=1", "at least 2"),
        ("algo.micro_batch_size=6", "multiple of algo.group_size"),
        ("algo.micro_batch_tokens=0", r"algo.micro_batch_tokens=0 must be at least 1"),
        ("sampler.temperature=0", "temperature"),
        ("eval.k=[1,8]", "eval.k"),
        ("task.ops=[/]", "task.ops"),
        ("eval.limit=-5", r"eval.limit=-5 must be at least 1"),
        ("eval.limit=0", r"eval.limit=0 must be at least 1"),
        ("task.max_test=-190", r"task.max_test=-190 must be at least 1"),
        ("task.max_train=0", r"task.max_train=0 must be at least 1"),
        ("task.data_path=problems.jsonl", "no effect with task=arith"),
        ("model=tiny model.tiny_hidden=129", "multiple of model.tiny_heads"),
        ("task.stop=[Question,'']", "empty string, which would end every completion at once"),
    ],
)
def test_cross_field_checks(override, needle):
    with pytest.raises(RapidError, match=needle):
        validate(compose(override.split()))


def test_prompts_per_round_must_fit_the_data():
    cfg = compose(["algo.steps_per_generation=4", "algo.prompts_per_step=8"])
    validate_data(cfg, 32)
    with pytest.raises(RapidError, match="32 prompts but task arith has only 31"):
        validate_data(cfg, 31)


@pytest.mark.parametrize(
    "args,needle",
    [
        (["algo.fooo=1"], "fooo"),
        (["algo.group_size=abc"], "group_size"),
        (["model=gpt-17"], "gpt-17"),
        (["algo.group_size=1"], "algo.group_size=1"),
        (["algo.micro_batch_size=3"], "multiple of algo.group_size"),
        # a choice outside its Enum fails at compose time and names the options (square brackets survive printing)
        (["reward.sandbox=jail"], "expected one of [bwrap, none]"),
        (["train.parallel=dp"], "expected one of [none, ddp, fsdp]"),
        (["eval.k=[1,8]"], "eval.k=[1, 8] must lie in 1..eval.n=1"),
    ],
)
def test_bad_overrides_end_in_one_line(args, needle):
    proc = rapid("train", *args)
    assert proc.returncode == 2
    out = (proc.stdout + proc.stderr).strip()
    assert len(out.splitlines()) == 1, out
    assert out.startswith("error:") and needle in out
    assert "Traceback" not in out


@pytest.mark.slow
@pytest.mark.parametrize(
    "args,needle",
    [
        (["model.path=/no/such/model"], "does not exist"),
        (["model.path=nobody/no-such-model-xyz"], "could not load model"),
        (["task.num_train=5"], "has only 5 training problems"),
        (["task=gsm8k", "task.data_path=/no/such.jsonl"], "does not exist"),
    ],
)
def test_runtime_user_errors_end_in_one_line(args, needle, tmp_path):
    proc = rapid("train", "model=tiny", "logger.wandb.mode=disabled", f"hydra.run.dir={tmp_path}", *args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and needle in lines[0], proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr


def test_help_lists_groups():
    proc = rapid("train", "--help")
    assert proc.returncode == 0
    for group in GROUPS:
        assert f"{group}:" in proc.stdout or f"{group}/" in proc.stdout or group in proc.stdout


def test_cfg_job_prints_the_composed_config():
    proc = rapid("train", "--cfg", "job", "model=tiny", "train.rounds=3", "seed=1")
    assert proc.returncode == 0, proc.stderr
    cfg = OmegaConf.create(proc.stdout)
    assert cfg.train.rounds == 3 and cfg.seed == 1 and cfg.model.name == "tiny"


@pytest.mark.parametrize("args,needle", [
    (["train", "trian.rounds=3"], "did you mean train.rounds?"),
    (["train", "algo.stepz_per_generation=3"], "did you mean algo.steps_per_generation?"),
    (["train", "--cfg", "job", "algo.group_size=1"], "at least 2 completions"),
    (["eval", "--cfg", "job", "eval.limit=0"], "eval.limit=0 must be at least 1"),
    # a value holding '=' or ',' (a sweep job's directory name) must be quoted for Hydra: say which and how
    (["train", "hydra.run.dir=runs/1_algo=pg,seed=0"], """cannot parse hydra.run.dir=runs/1_algo=pg,seed=0"""),
    (["train", "hydra.run.dir=runs/1_algo=pg,seed=0"], """'hydra.run.dir="runs/1_algo=pg,seed=0"'"""),
    # a command pasted twice, a stray word: no quoting advice
    (["train", "rapid", "train", "train.rounds=1"], "'rapid' is not an override (was the command pasted twice?)"),
    (["eval", "quickly"], "'quickly' is not an override; overrides are key=value, e.g. train.rounds=3"),
    # Hydra prints one job's config or info, not a sweep's
    (["train", "-m", "seed=0,1", "--cfg", "job"], "--cfg works on one job, not a sweep: drop -m"),
    (["eval", "--multirun", "seed=0,1", "--info"], "--info works on one job, not a sweep: drop --multirun"),
])
def test_bad_overrides_are_one_line_in_every_mode(args, needle):
    proc = rapid(*args)
    assert proc.returncode == 2 and needle in proc.stdout, proc.stdout + proc.stderr
    assert len(proc.stdout.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


def test_a_sweep_checks_every_combination_before_the_first_job(tmp_path):
    proc = rapid("train", "-m", "model=tiny", "algo.group_size=2,4,1", "train.rounds=1", cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "(sweep job model=tiny algo.group_size=1 train.rounds=1)" in proc.stdout
    assert not (tmp_path / "multirun").exists()  # no job ran, no directory was claimed


@pytest.mark.parametrize("command", ["train", "eval", "prepare", "doctor"])
def test_each_command_has_its_own_help(command):
    proc = rapid(command, "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"rapid {command}:")
    if command in ("train", "eval"):  # every key with its description from config.py
        assert "algo.steps_per_generation" in proc.stdout and "A: optimizer steps per generation round" in proc.stdout


@pytest.mark.parametrize("a", [1, 2])
def test_train_samples_buys_the_same_completions_whatever_a(tmp_path, a):
    """train.samples=16 with M=G=2: 4 rounds of one step at A=1, 2 rounds of two steps at A=2; the
    configured train.rounds (the preset's 2) is not used."""
    import json

    from rapid_cli.trainer import train

    cfg = compose(TINY + [f"algo.steps_per_generation={a}", "train.samples=16", "train.rounds=7",
                          "eval.at_start=false", "train.save_every=0"])
    train(cfg, tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    rounds = [r["round"] for r in rows if "reward/mean" in r]
    assert rounds == list(range(1, 16 // (2 * 2 * a) + 1))


@pytest.mark.parametrize("a", [1, 2])
def test_eval_every_samples_evaluates_at_the_same_completion_counts_whatever_a(tmp_path, a):
    """eval.every_samples=8 with M=G=2: after rounds 2 and 4 at A=1, after rounds 1 and 2 at A=2, so curves of
    contenders with different A have points at the same training budgets (8 and 16 completions)."""
    import json

    from rapid_cli.trainer import train

    cfg = compose(TINY + [f"algo.steps_per_generation={a}", "train.samples=16", "eval.every_samples=8",
                          "eval.every=3", "eval.at_start=false", "train.save_every=0"])
    train(cfg, tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["perf/samples"] for r in rows if "eval/pass@1" in r] == [8, 16]


@pytest.mark.parametrize("a, rounds", [(1, 2), (2, 1)])
def test_save_every_samples_checkpoints_at_the_same_completion_counts_whatever_a(a, rounds):
    """train.save_every_samples=8 with M=G=2 is every 2 rounds at A=1 and every round at A=2: contenders with
    different A pay for the same number of saves, so their wall-clocks compare."""
    import torch

    from rapid_cli.plan import make_plan

    cfg = compose(TINY + [f"algo.steps_per_generation={a}", "train.samples=16", "train.save_every_samples=8",
                          "train.save_every=3"])
    validate(cfg)
    plan = make_plan(cfg, torch.device("cpu"))
    assert plan.save_every == rounds
    assert [r for r in range(1, plan.rounds + 1) if plan.saves_after(r)] == list(range(rounds, plan.rounds + 1, rounds))


def test_save_every_samples_must_fill_whole_rounds():
    with pytest.raises(RapidError, match=r"train.save_every_samples=12 must be a positive multiple of the 8 "):
        validate(compose(TINY + ["train.save_every_samples=12"]))


def test_eval_every_samples_must_fill_whole_rounds():
    with pytest.raises(RapidError, match=r"eval.every_samples=12 must be a positive multiple of the 8 .*=8 or =16"):
        validate(compose(TINY + ["eval.every_samples=12"]))


def test_train_samples_must_fill_whole_rounds():
    with pytest.raises(RapidError, match=r"train.samples=10 must be a positive multiple of the 8 .*train.samples=8"):
        validate(compose(TINY + ["train.samples=10"]))
