"""Sweeps: Hydra's basic launcher over A and seeds, `rapid report` over the result, the shipped Optuna
sweeper (a real 2-trial study) and the SLURM launcher config composing."""

from __future__ import annotations

import os
import subprocess

import pytest
from omegaconf import OmegaConf

from conftest import RAPID, REPO, TINY, rapid
from rapid_cli.errors import RapidError

SMALL = [o for o in TINY if not o.startswith(("train.rounds", "algo.steps_per_generation"))] + ["train.rounds=2"]


def rapid_ok(*args) -> str:
    """The stdout of `rapid <args>`, which must succeed."""
    proc = rapid(*args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_a_path_in_a_sweep_override_does_not_nest_the_job_directory():
    """task.data_path=/data/mbpp.jsonl in `rapid train -m` made Hydra's job directory
    0_seed=0,task.data_path=/data/mbpp.jsonl: five nested directories, the job's files in the last."""
    from rapid_cli.config import job_dirname

    name = job_dirname("seed=0,task.data_path=/data/mbpp.jsonl")
    assert "/" not in name and name.startswith("seed=0,task.data_path=_data_mbpp.jsonl")
    assert name == job_dirname("seed=0,task.data_path=/data/mbpp.jsonl")  # resume finds the same job
    assert name != job_dirname("seed=0,task.data_path=_data_mbpp.jsonl")  # and two paths never share one


@pytest.mark.slow
def test_sweep_over_a_and_seeds_then_report(tmp_path):
    sweep = tmp_path / "sweep"
    rapid_ok("train", "-m", *SMALL, "eval.n=2", "eval.k=[1,2]", "algo.steps_per_generation=1,2", "seed=0,1",
             f"hydra.sweep.dir={sweep}")
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert len(jobs) == 4 and all((j / "metrics.jsonl").exists() and (j / "checkpoints").is_dir() for j in jobs)

    out = rapid_ok("report", str(sweep), "--target", "0.5", "--baseline", "algo.steps_per_generation=1")
    assert "report.md" in out
    table = (sweep / "report.md").read_text().partition("![curves]")[0]  # the main table, not those by budget
    header = next(line for line in table.splitlines() if line.startswith("| config |")).split(" | ")
    assert "eval pass@2" in header and "x algo.steps_per_generation=1" in header
    ratio = header.index("x algo.steps_per_generation=1")
    rows = [line for line in table.splitlines() if line.startswith("| algo.steps_per_generation=")]
    assert len(rows) == 2 and all("| 0,1 |" in r for r in rows)  # one row per A, both seeds in each
    assert "± " in rows[0] and "all of them used" in table
    assert rows[0].split(" | ")[ratio] == "1.00" and float(rows[1].split(" | ")[ratio]) > 0
    base = next(line for line in table.splitlines() if line.startswith("| base model"))
    assert "| 0,1 | 0 |" in base  # the round-0 evals of seeds 0 and 1
    bad = rapid("report", str(sweep), "--baseline", "algo=grpo")
    assert bad.returncode == 2 and "names no row" in bad.stdout + bad.stderr
    assert (sweep / "report.png").stat().st_size > 5000


@pytest.mark.slow
def test_report_takes_the_base_model_from_rapid_eval_and_labels_presets_by_name(tmp_path):
    """The paper's table (docs/results.md): training sweeps without a round-0 eval, the base model measured
    once per seed by `rapid eval -m`, one report over the directory holding both."""
    import json
    import statistics

    rapid_ok("train", "-m", *SMALL, "eval.at_start=false", "eval.n=2", "eval.k=[1,2]", "algo=rapid,grpo",
             f"hydra.sweep.dir={tmp_path / 'train'}")
    rapid_ok("eval", "-m", *SMALL, "eval.n=2", "eval.k=[1,2]", "eval.temperature=1.0", "seed=0,1",
             f"hydra.sweep.dir={tmp_path / 'base'}")
    rapid_ok("report", str(tmp_path), "--baseline", "algo=grpo")
    lines = (tmp_path / "report.md").read_text().partition("![curves]")[0].splitlines()  # the main table
    header = next(line for line in lines if line.startswith("| config |")).split(" | ")
    evals = [json.loads(p.read_text())["metrics"] for p in sorted((tmp_path / "base").rglob("eval.json"))]
    assert len(evals) == 2
    base = next(line for line in lines if line.startswith("| base model")).split(" | ")
    for k in (1, 2):
        values = [e[f"eval/pass@{k}"] for e in evals]
        want = f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"
        assert base[header.index(f"eval pass@{k}")] == want
    assert base[1] == "0,1"
    labels = [line.split(" | ")[0] for line in lines if line.startswith("| algo=")]
    assert sorted(labels) == ["| algo=grpo", "| algo=rapid"]  # the preset's own A is not spelled out as "-"


def test_report_on_a_directory_without_runs_is_one_line(tmp_path):
    proc = subprocess.run([RAPID, "report", str(tmp_path)], capture_output=True, text=True, cwd=REPO)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2 and out.count("\n") == 1 and "metrics.jsonl" in out


@pytest.mark.slow
def test_optuna_sweeper_runs_a_real_study(tmp_path):
    sweep = tmp_path / "optuna"
    out = rapid_ok("train", "-m", "hydra/sweeper=rapid_optuna", "hydra.sweeper.n_trials=2", *SMALL, "train.rounds=1",
                f"hydra.sweep.dir={sweep}")
    assert "Best parameters" in out
    result = OmegaConf.load(sweep / "optimization_results.yaml")
    assert set(result.best_params) == {"optimizer.lr", "algo.steps_per_generation"}
    assert 0.0 <= result.best_value <= 1.0


def test_slurm_launcher_config_composes():
    from hydra import compose, initialize_config_dir

    from rapid_cli.config import config_dir, register_configs

    register_configs()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("config", overrides=["hydra/launcher=rapid_slurm", "hydra.launcher.partition=gpu"],
                      return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher") and launcher.gpus_per_node == 1 and launcher.partition == "gpu"
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        multi = compose("config", overrides=["hydra/launcher=rapid_slurm_multinode", "hydra.launcher.gpus_per_node=4",
                                             "train.parallel=fsdp"], return_hydra_config=True)
    assert multi.hydra.launcher.nodes == 2 and multi.hydra.launcher.tasks_per_node == 4  # one task per GPU
    assert multi.train.parallel == "fsdp"


@pytest.mark.slow
def test_the_paper_table_script_runs_every_contender_and_continues_where_it_stopped(tmp_path):
    """scripts/paper_table.sh (docs/results.md) with the smoke preset's sizes: every contender once per seed
    it promises (the headline pair and the base model on SEEDS), one report; with AGAIN, every final checkpoint
    and the base model evaluated once more under those overrides, in a table of its own; a second call trains
    and evaluates nothing again."""
    small = ["model=tiny", "sampler=hf", "task=arith", "train.samples=32", "algo.group_size=2",
             "algo.prompts_per_step=2", "algo.micro_batch_tokens=64", "sampler.max_tokens=8", "eval.limit=4",
             "eval.n=2", "eval.k=[1,2]"]
    env = {"OUT": str(tmp_path), "RAPID": RAPID, "WANDB_MODE": "disabled", "SEEDS": "0 2",
           "AGAIN": "eval.temperature=0.5"}
    first = subprocess.run(["bash", "scripts/paper_table.sh", "gsm8k", *small], cwd=REPO, capture_output=True,
                           text=True, env={**os.environ, **env}, timeout=1200)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    text = (tmp_path / "report.md").read_text()
    main, again = text.partition("![curves]")[0], text.partition("Evaluated again: temperature 0.5")[2]
    for table in (main, again):
        lines = table.splitlines()
        labels = sorted(line.split(" | ")[0][2:] for line in lines if line.startswith(("| algo=", "| base")))
        assert labels == ["algo=dapo", "algo=grpo", "algo=pg", "algo=rapid", "algo=rapid algo.steps_per_generation=2",
                          "algo=rapid algo.steps_per_generation=8", "base model"]
        seeds = {line.split(" | ")[0][2:]: line.split(" | ")[1] for line in lines if line.startswith("| ")}
        assert seeds["algo=rapid"] == seeds["algo=grpo"] == seeds["base model"] == "0,2"
    assert len(list(tmp_path.glob("*/*/again-eval.temperature-0.5/eval.json"))) == 8  # every job
    # seed-major: every contender on the first seed has finished before the headline pair's next seed starts
    first_seed = [p.stat().st_mtime for d in ("seed0", "baselines", "rapid-a")
                  for p in tmp_path.glob(f"{d}/*/metrics.jsonl")]
    next_seed = [p.stat().st_mtime for p in tmp_path.glob("seed2/*/.hydra/config.yaml")]
    assert len(first_seed) == 6 and len(next_seed) == 2 and max(first_seed) <= min(next_seed)
    stamps = {p: p.stat().st_mtime for p in [*tmp_path.rglob("metrics.jsonl"), *tmp_path.rglob("eval.json")]}
    second = subprocess.run(["bash", "scripts/paper_table.sh", "gsm8k", *small], cwd=REPO, capture_output=True,
                            text=True, env={**os.environ, **env}, timeout=1200)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert {p: p.stat().st_mtime for p in [*tmp_path.rglob("metrics.jsonl"), *tmp_path.rglob("eval.json")]} == stamps


def test_report_curves_start_from_the_base_model_and_the_plot_has_a_bar_per_row(tmp_path):
    """Runs trained with eval.at_start=false evaluate only after training: their accuracy curves begin at 0 s
    from the base model's evaluation of the same seed; a run that evaluated at round 0 keeps its own."""
    from rapid_cli.report import Run, eval_curve, plot

    rows = [{"round": 1, "time/elapsed": 100.0, "time/update": 60.0, "time/generate": 30.0, "reward/mean": 0.1},
            {"round": 2, "time/elapsed": 230.0, "time/eval": 30.0, "eval/pass@1": 0.3, "reward/mean": 0.2}]
    later = Run(tmp_path / "a", ["algo=rapid", "seed=1"], "1", rows, label="algo=rapid")
    own = Run(tmp_path / "b", ["algo=grpo", "seed=1"], "1",
              [{"round": 0, "time/elapsed": 12.0, "time/eval": 10.0, "eval/pass@1": 0.05}, *rows], label="algo=grpo")
    base = {"0": {"eval/pass@1": 0.9}, "1": {"eval/pass@1": 0.1}}
    assert eval_curve(later, "eval/pass@1", base) == [(0.0, 0.1), (200.0, 0.3)]  # seed 1's base, eval time out
    assert eval_curve(own, "eval/pass@1", base) == [(2.0, 0.05), (190.0, 0.3)]
    assert eval_curve(later, "reward/mean", {}) == [(100.0, 0.1), (200.0, 0.2)]
    png = plot([later, own], tmp_path / "report.png", evals=base)
    assert png.stat().st_size > 5000


def test_report_gives_the_training_seconds_to_an_eval_target_as_the_paper_measures_them(tmp_path):
    """The paper's metric: training wall-clock (evaluations taken out) until eval pass@1 first reaches a stated
    value, per seed, beside the train-reward target; a base model that already meets it counts 0 s, a seed
    that never reaches it is counted out in the "(reached/seeds)" tally."""
    from rapid_cli.report import Run, parse_target, sweep_table

    def rows(first: float, second: float) -> list[dict]:
        return [{"round": 1, "time/elapsed": 100.0, "reward/mean": 0.1},
                {"round": 2, "time/elapsed": 230.0, "time/eval": 30.0, "reward/mean": 0.6, "eval/pass@1": first},
                {"round": 3, "time/elapsed": 380.0, "time/eval": 30.0, "reward/mean": 0.7, "eval/pass@1": second}]

    runs = [Run(tmp_path / "a0", ["algo=rapid", "seed=0"], "0", rows(0.06, 0.07), label="algo=rapid"),
            Run(tmp_path / "a1", ["algo=rapid", "seed=1"], "1", rows(0.02, 0.05), label="algo=rapid"),
            Run(tmp_path / "g0", ["algo=grpo", "seed=0"], "0", rows(0.01, 0.02), label="algo=grpo")]
    targets = [parse_target("0.5"), parse_target("eval/pass@1=0.05")]
    assert targets == [("reward/mean", 0.5), ("eval/pass@1", 0.05)]
    header, table = sweep_table(runs, targets)
    rapid, grpo = (dict(zip(header, row, strict=True)) for row in table)
    assert rapid["s to reward >= 0.5"] == "200.0 ± 0.0 (2/2)"  # round 2: 230 s less the 30 s eval
    assert rapid["s to eval/pass@1 >= 0.05"] == "260.0 ± 84.9 (2/2)"  # seed 0 at 200 s, seed 1 at 320 s
    assert grpo["s to eval/pass@1 >= 0.05"] == "- (0/1)"
    _, (row, _) = sweep_table(runs, targets, evals={"0": {"eval/pass@1": 0.05}, "1": {"eval/pass@1": 0.0}})
    assert dict(zip(header, row, strict=True))["s to eval/pass@1 >= 0.05"] == "160.0 ± 226.3 (2/2)"  # seed 0: 0 s
    with pytest.raises(RapidError, match="--target eval/pass@1=high: give a number"):
        parse_target("eval/pass@1=high")


def _job(root, name: str, seed: int, rows: list[dict], rounds: int = 2, tail: bytes = b""):
    """A sweep job directory as `rapid train -m` leaves it: .hydra/config.yaml and overrides.yaml, metrics.jsonl."""
    import json

    job = root / name
    (job / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create({"seed": seed, "train": {"rounds": rounds, "samples": None}}),
                   job / ".hydra" / "config.yaml")
    OmegaConf.save(OmegaConf.create(["train.rounds=2", f"seed={seed}"]), job / ".hydra" / "overrides.yaml")
    (job / "metrics.jsonl").write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in rows) + tail)
    return job


def test_report_names_unfinished_cut_and_unreadable_runs_and_keeps_them_out_of_the_means(tmp_path):
    """An unfinished job's round-0 (base model) eval was averaged in as its final pass@1 (0.9 here made
    0.600 +- 0.424), a job cut before round 1 was dropped unnamed, and a metrics.jsonl with a few binary bytes
    was a UnicodeDecodeError traceback; a job whose sweep recorded it as failed (FAILED) after its last metrics row
    was averaged as finished. Each is named on a line of its own; only finished runs are averaged."""
    start = {"round": 0, "time/elapsed": 5.0, "time/eval": 5.0}
    done = [{**start, "eval/pass@1": 0.1}, {"round": 1, "time/elapsed": 20.0, "reward/mean": 0.2},
            {"round": 2, "time/elapsed": 40.0, "time/eval": 5.0, "reward/mean": 0.4, "eval/pass@1": 0.3}]
    _job(tmp_path, "0", 0, done)
    _job(tmp_path, "1", 1, [{**start, "eval/pass@1": 0.9}, {"round": 1, "time/elapsed": 20.0, "reward/mean": 0.2}])
    _job(tmp_path, "2", 2, [{**start, "eval/pass@1": 0.5}])
    _job(tmp_path, "3", 3, done[:2], tail=b'{"round": 2, "reward/mean": \xff\xfe0.4}\n')
    # a job that failed after its last round's metrics (the final save on a full disk): its rows look finished
    (_job(tmp_path, "4", 4, done) / "FAILED").write_text("no space left on device writing the checkpoint\n\n...")
    failed_early = tmp_path / "5"  # failed before any metrics: named with the reason it recorded
    (failed_early / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(["train.rounds=2", "seed=5"]), failed_early / ".hydra" / "overrides.yaml")
    (failed_early / "FAILED").write_text("bad.jsonl, line 2 is not JSON\n")
    proc = rapid("report", str(tmp_path))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "Traceback" not in out, out
    table = (tmp_path / "report.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith("| (all runs alike)")).split(" | ")
    header = next(line for line in table.splitlines() if line.startswith("| config |")).split(" | ")
    assert row[1] == "0" and row[header.index("eval pass@1")] == "0.300"  # the finished run alone
    base = next(line for line in table.splitlines() if line.startswith("| base model")).split(" | ")
    assert base[1] == "0" and base[header.index("eval pass@1")] == "0.100"
    left_out = next(line for line in table.splitlines() if "left out of the means" in line)
    for name, why in (("1", "unfinished: round 1 of 2"), ("2", "no round finished"),
                      ("3", "metrics.jsonl line 3 is not UTF-8"),
                      ("4", "failed: no space left on device writing the checkpoint"),
                      ("5", "failed: bad.jsonl, line 2 is not JSON")):
        assert f"{tmp_path / name} ({why}" in left_out, left_out
    assert "left out of the means" in " ".join(proc.stdout.split())


def _data(path, broken: bool = False):
    """A custom task's data file; `broken`: its second line is no JSON (the job fails when it loads it)."""
    import json

    rows = [json.dumps({"question": f"{a} + {a}", "answer": str(2 * a)}) for a in range(10)]
    if broken:
        rows[1] = "{not json"
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.mark.slow
def test_a_failed_job_is_recorded_the_sweep_runs_every_job_and_a_rerun_redoes_only_it(tmp_path):
    """`rapid train -m` stopped at the first job that failed: the later jobs never ran and nothing said which
    were skipped. Every job runs; the failed one's directory says why (FAILED), the sweep ends with a table and
    exit 1, and the printed command (pasted as printed) redoes only the job that did not finish."""
    import shlex

    bad, good = _data(tmp_path / "bad.jsonl", broken=True), _data(tmp_path / "good.jsonl")
    sweep = tmp_path / "sweep"
    args = ["train", "-m", *SMALL, "train.rounds=1", "eval.at_start=false", "task=custom",
            "task.prompt_field=question", "reward.functions=[{_target_: rapid_cli.rewards.numeric_match}]",
            f"task.data_path={bad},{good}", f"hydra.sweep.dir={sweep}"]
    proc = rapid(*args)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1 and "Traceback" not in out, out
    jobs = {p.name[0]: p for p in sweep.iterdir() if p.is_dir()}
    assert sorted(jobs) == ["0", "1"], out
    why = (jobs["0"] / "FAILED").read_text().strip()
    assert "\n" not in why and "bad.jsonl, line 2" in why, why
    assert not (jobs["1"] / "FAILED").exists() and (jobs["1"] / "metrics.jsonl").exists()
    lines = proc.stdout.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith(f"sweep {sweep}: 2 jobs"))
    assert "1 finished, 1 failed" in lines[head], out
    assert lines[head + 1].split()[0] == "failed" and "bad.jsonl, line 2" in lines[head + 1]
    assert lines[head + 2].split()[0] == "finished" and jobs["1"].name in lines[head + 2]
    again = next(line for line in lines if line.startswith("run again")).split(": ", 1)[1]
    assert again.startswith("rapid train -m ") and "train.resume=auto" in again

    _data(bad)  # the data fixed: the printed command, pasted into a shell, trains only the failed job
    finished = (jobs["1"] / "metrics.jsonl").stat().st_mtime
    words = shlex.split(again)
    proc = rapid(*words[1:])
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert (jobs["1"] / "metrics.jsonl").stat().st_mtime == finished
    assert not (jobs["0"] / "FAILED").exists() and (jobs["0"] / "metrics.jsonl").exists()
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == sorted(p.name for p in jobs.values()), out
    assert "2 finished" in out and "run again" not in out


def test_the_sweep_table_names_jobs_that_never_ran(tmp_path, capsys):
    """A sweep stopped by a signal (or a launcher that gave up) left later jobs unrun without a word."""
    from rapid_cli.sweeps import summary

    _job(tmp_path, "0_seed=0", 0, [{"round": 1}, {"round": 2}])
    (_job(tmp_path, "1_seed=1", 1, [{"round": 1}]) / "FAILED").write_text("CUDA out of memory\ntraceback...\n")
    planned = [["train.rounds=2", f"seed={s}"] for s in range(3)]
    assert summary(tmp_path, planned, "rapid train -m seed=0,1,2 train.resume=auto") is False
    out = capsys.readouterr().out
    assert "3 jobs, 1 finished, 1 failed, 1 not run" in out
    states = [line.split()[0] for line in out.splitlines()[1:4]]
    assert states == ["finished", "failed", "not"] and "(CUDA out of memory)" in out
    assert "rapid train -m seed=0,1,2 train.resume=auto" in out


def test_report_shows_each_eval_pass_at_k_with_its_interval_over_the_problems(tmp_path):
    """One seed's pass@1 of 0.015 beside a base model's 0.006 reads as progress until the evaluation's own noise
    stands next to it: the half-width of a 95% interval (1.96 standard errors over the problems), the mean over
    the seeds; for a `rapid eval` result that predates the logged standard error, computed from its per-problem
    counts."""
    import json

    from rapid_cli.report import Run, eval_only, sweep_table

    rows = [{"round": 1, "time/elapsed": 100.0, "reward/mean": 0.1},
            {"round": 2, "time/elapsed": 230.0, "eval/pass@1": 0.015, "eval/pass@1_se": 0.005}]
    runs = [Run(tmp_path / "a0", ["algo=rapid", "seed=0"], "0", rows, label="algo=rapid"),
            Run(tmp_path / "a1", ["algo=rapid", "seed=1"], "1", [rows[0], {**rows[1], "eval/pass@1_se": 0.007}],
                label="algo=rapid")]
    (tmp_path / "base").mkdir()
    per_problem = [{"id": f"test-{i}", "correct": c} for i, c in enumerate([0, 2, 0, 0])]
    (tmp_path / "base" / "eval.json").write_text(json.dumps(
        {"seed": 0, "n": 4, "metrics": {"eval/pass@1": 0.125}, "per_problem": per_problem}))
    evals = eval_only(tmp_path)
    assert evals["0"]["eval/pass@1_se"] == pytest.approx(0.125)  # stdev([0, .5, 0, 0]) / 2
    header, table = sweep_table(runs, [], base_row=True, evals=evals)
    base, rapid_row = (dict(zip(header, row, strict=True)) for row in table)
    assert rapid_row["eval pass@1"] == "0.015 ± 0.000"  # the spread over seeds
    assert rapid_row["eval pass@1 95% ± (problems)"] == f"{1.96 * 0.006:.3f}"  # the evaluation's own noise
    assert base["eval pass@1 95% ± (problems)"] == f"{1.96 * 0.125:.3f}"
    old = [rows[0], {k: v for k, v in rows[1].items() if not k.endswith("_se")}]
    header, _ = sweep_table([Run(tmp_path / "old", ["seed=0"], "0", old)], [])
    assert not any("(problems)" in h for h in header)  # runs from before the standard error was logged


def test_the_base_model_row_comes_from_test_split_evaluations_only(tmp_path):
    """`rapid eval eval.split=train` beside a sweep measures the training problems, not the base model's test
    score: the report took the first eval.json by path (here the train split's) as the base model's row."""
    import json

    from rapid_cli.report import eval_only

    for name, split, value in (("a-train", "train", 0.02), ("base", "test", 0.006)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "eval.json").write_text(json.dumps({"seed": 0, "split": split,
                                                               "metrics": {"eval/pass@1": value}}))
    assert eval_only(tmp_path)["0"]["eval/pass@1"] == 0.006


def test_an_unfinished_run_is_labelled_by_what_sets_it_apart(tmp_path):
    """A finished RAPID run beside a GRPO run stopped halfway: the labels came from the finished runs alone, so
    both were "(all runs alike)" and the GRPO curves were drawn as "(all runs alike) (unfinished)"."""
    from rapid_cli.report import load_runs

    rows = [{"round": 1, "time/elapsed": 20.0, "reward/mean": 0.2}, {"round": 2, "time/elapsed": 40.0,
                                                                      "reward/mean": 0.4, "eval/pass@1": 0.3}]
    for name, algo, done in (("rapid", "rapid", rows), ("grpo", "grpo", rows[:1])):
        job = _job(tmp_path, name, 0, done)
        OmegaConf.save(OmegaConf.create([f"algo={algo}", "seed=0"]), job / ".hydra" / "overrides.yaml")
    labels = {r.path.name: (r.label, r.unfinished) for r in load_runs(tmp_path)}
    assert labels == {"rapid": ("algo=rapid", ""), "grpo": ("algo=grpo", "unfinished: round 1 of 2")}


def _evaluation(directory, seed: int, temperature: float, pass1: float, model: str = "base"):
    """A `rapid eval` result as eval.json holds it: 200 problems x 4 samples at `temperature`."""
    import json

    directory.mkdir(parents=True)
    (directory / "eval.json").write_text(json.dumps(
        {"model": model, "split": "test", "problems": 200, "n": 4, "temperature": temperature, "top_p": 1.0,
         "max_tokens": 256, "seed": seed, "metrics": {"eval/pass@1": pass1, "eval/pass@1_se": 0.005}}))


def _evaluated_job(root, name: str, seed: int, pass1: float):
    """A finished job that evaluated 200 problems x 4 at T=0.9, as its config says."""
    job = _job(root, name, seed, [{"round": 1, "time/elapsed": 10.0, "reward/mean": 0.1},
                                  {"round": 2, "time/elapsed": 20.0, "reward/mean": 0.2, "eval/pass@1": pass1,
                                   "eval/pass@1_se": 0.006, "eval/problems": 200}])
    config = OmegaConf.load(job / ".hydra" / "config.yaml")
    config.eval = {"n": 4, "temperature": 0.9, "top_p": 1.0, "max_tokens": None, "split": "test"}
    config.sampler = {"max_tokens": 256}
    OmegaConf.save(config, job / ".hydra" / "config.yaml")
    return job


def test_the_base_model_row_is_the_evaluation_measured_as_the_runs_are(tmp_path):
    """Beside the base model at the runs' T=0.9, the same model at T=0.7, and a trained checkpoint evaluated again
    inside its run: the report took the first eval.json by path (a-base-t07/, or the checkpoint's where it sorted
    first) as the base model's row."""
    from rapid_cli.report import eval_only, load_runs, report

    _evaluated_job(tmp_path, "rapid", 0, 0.02)
    _evaluation(tmp_path / "rapid" / "again", 0, 0.9, 0.5, model="rapid/checkpoints/round-000002/model")
    runs = load_runs(tmp_path)
    assert [r.path.name for r in runs] == ["rapid"]
    assert eval_only(tmp_path, runs) == {}  # a checkpoint's evaluation is not the base model's
    _evaluation(tmp_path / "a-base-t07", 0, 0.7, 0.021)
    _evaluation(tmp_path / "base", 0, 0.9, 0.006)
    assert eval_only(tmp_path, runs)["0"]["eval/pass@1"] == 0.006
    text = report(tmp_path).read_text()  # the one measured differently is in a table of its own, not dropped
    assert "| base model | 0 | 0.021 |" in text.partition("Evaluated again: temperature 0.7 (the runs' own: 0.9)")[2]


def test_report_puts_each_final_checkpoint_evaluated_again_beside_the_base_model_measured_the_same_way(tmp_path):
    """A gain at T=0.9 that the base model reaches at T=0.7 is sharpening, not learning (docs/results.md): with each
    run's final checkpoint evaluated again at T=0.7 (`rapid eval ... hydra.run.dir=<job>/eval-t07`), the report
    gives a table of those evaluations, mean over the seeds, with the base model's at T=0.7 as its first row."""
    from rapid_cli.report import report

    for seed, (trained, again, base) in enumerate([(0.02, 0.024, 0.021), (0.03, 0.030, 0.019)]):
        job = _evaluated_job(tmp_path, f"rapid{seed}", seed, trained)
        _evaluation(job / "eval-t07", seed, 0.7, again, model=f"{job}/checkpoints/round-000002/model")
        _evaluation(tmp_path / "base" / str(seed), seed, 0.9, 0.006)
        _evaluation(tmp_path / "a-base-t07" / str(seed), seed, 0.7, base)  # sorts first
    text = report(tmp_path).read_text()
    main, _, again = text.partition("temperature 0.7 (the runs' own: 0.9)")
    assert "| base model | 0,1 | 0 | 0.006 ± 0.000 |" in main and "0.024" not in main
    assert "| base model | 0,1 | 0.020 ± 0.001 |" in again
    assert "| (all runs alike) | 0,1 | 0.027 ± 0.004 |" in again


def test_report_tabulates_each_eval_pass_at_k_at_the_budgets_the_curves_share(tmp_path):
    """Contenders evaluated every 2048 completions compare at equal budgets: the curves' points as a table (mean over
    the seeds, the training seconds it took, evaluations excluded), the base model at 0 and an unfinished run's
    points as far as it got, so a GRPO run stopped halfway still compares where it has been."""
    from rapid_cli.report import report

    def rows(values: list[float], per_round: float) -> list[dict]:
        out = []
        for i, value in enumerate(values, start=1):
            out += [{"round": 2 * i - 1, "time/elapsed": (2 * i - 1) * per_round + 10.0 * (i - 1),
                     "reward/mean": 0.1, "perf/samples": (2 * i - 1) * 1024},
                    {"round": 2 * i, "time/elapsed": 2 * i * per_round + 10.0 * i, "time/eval": 10.0,
                     "reward/mean": 0.1, "perf/samples": 2 * i * 1024, "eval/pass@1": value}]
        return out

    for name, algo, seed, done in (("r0", "rapid", 0, [0.015, 0.018]), ("r1", "rapid", 1, [0.025, 0.028]),
                                   ("g0", "grpo", 0, [0.010])):
        job = _job(tmp_path, name, seed, rows(done, 100.0 if algo == "rapid" else 300.0), rounds=4)
        OmegaConf.save(OmegaConf.create([f"algo={algo}", f"seed={seed}"]), job / ".hydra" / "overrides.yaml")
    _evaluation(tmp_path / "base", 0, 0.9, 0.006)
    _evaluation(tmp_path / "base1", 1, 0.9, 0.008)
    text = report(tmp_path).read_text()
    table = text[text.index("eval pass@1 at each budget"):]
    assert "| config | 0 | 2048 | 4096 |" in table
    assert "| base model | 0.007 ± 0.001 | - | - |" in table
    assert "| algo=rapid | - | 0.020 ± 0.007 (200 s) | 0.023 ± 0.007 (400 s) |" in table
    assert "| algo=grpo (unfinished) | - | 0.010 (600 s) | - |" in table


def test_a_seed_evaluated_twice_counts_in_the_base_row_twice(tmp_path):
    """The base model evaluated with seed 0 on two machines (bf16 sampling differs between CPUs, so the two draw
    different completions): the report kept the first eval.json by path and dropped the other without a word."""
    from rapid_cli.report import eval_only, load_runs, report

    _evaluated_job(tmp_path, "rapid", 0, 0.02)
    runs = load_runs(tmp_path)
    _evaluation(tmp_path / "base-a" / "0", 0, 0.9, 0.006)
    _evaluation(tmp_path / "base-b" / "0", 0, 0.9, 0.018)
    _evaluation(tmp_path / "base-b" / "1", 1, 0.9, 0.012)
    base = eval_only(tmp_path, runs)
    assert sorted(e["eval/pass@1"] for e in base.values()) == [0.006, 0.012, 0.018]
    assert base["0"]["eval/pass@1"] == 0.006  # a run of seed 0 starts its curve from the first by path
    text = report(tmp_path).read_text()
    assert "| base model | 0,0#2,1 | 0 | 0.012 ± 0.006 |" in text


# A job's training raising what no check foresaw (a CUDA out-of-memory error, a bug). Nothing on a CPU raises a
# CUDA OOM, so the job's train() raises it; the sweep around it, its record and its table are the real ones.
_OOM_IN_JOB_0 = """
import sys

import rapid_cli.trainer as trainer

real = trainer.train


def train(cfg, run_dir, run_name="rapid"):
    if cfg.seed == 0:
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB\\n(more detail)")
    return real(cfg, run_dir, run_name)


trainer.train = train
from rapid_cli.cli import main

main(sys.argv[1:])
"""


@pytest.mark.slow
def test_an_unexpected_exception_in_a_job_is_recorded_with_its_traceback_and_the_sweep_goes_on(tmp_path):
    import sys

    sweep = tmp_path / "sweep"
    env = {**os.environ, "WANDB_MODE": "disabled"}
    proc = subprocess.run([sys.executable, "-c", _OOM_IN_JOB_0, "train", "-m", *SMALL, "train.rounds=1",
                           "eval.at_start=false", "seed=0,1", f"hydra.sweep.dir={sweep}"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    jobs = {p.name[0]: p for p in sweep.iterdir() if p.is_dir()}
    record = (jobs["0"] / "FAILED").read_text()
    assert record.splitlines()[0] == "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB", record
    assert "Traceback (most recent call last)" in record and ", in train\n" in record
    assert "Traceback" not in proc.stdout  # the terminal gets one line; the traceback is in the record
    said = " ".join(proc.stdout.split())
    assert f"sweep job 0 ({jobs['0'].name}) failed: RuntimeError: CUDA out of memory" in said, out
    assert f"(traceback in {jobs['0'] / 'FAILED'})" in said and "going on with the next job" in said
    assert (jobs["1"] / "metrics.jsonl").exists() and not (jobs["1"] / "FAILED").exists()
    assert "2 jobs, 1 finished, 1 failed" in said, out
