"""Sweeps (`rapid train -m`) run every job: a job that fails (a damaged model, an out-of-memory error, a reward
bug) is recorded in its own directory and the sweep goes on with the next one; at the end one table names the
finished, failed, stopped and not-run jobs, with the command that redoes only what did not finish, and the sweep
exits 1 when any job did not finish.

- `rundir.record_failure`: `<job dir>/FAILED` holds the one-line error (then, for an unexpected exception, its
  traceback). It is written only while the job holds its run directory's lock (never into another process's
  live run) and removed when the job is run again.
- `summary`: each job's state is read back from the sweep directory (FAILED, else metrics.jsonl judged as
  `rapid report` judges it), so the table is the same whichever launcher ran the jobs: Hydra's basic launcher
  runs them one after another in this process; submitit's SLURM launcher runs them as an array of SLURM jobs,
  where a failure is recorded the same way, and this process reads their directories once the array ends.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rapid_cli.rundir import FAILED, failed_earlier

EXIT_JOBS_FAILED = 1  # the exit status of a sweep in which some job did not finish
started: dict[tuple[str, ...], Path] = {}  # this process's jobs (basic launcher): overrides key -> run directory
refused: dict[tuple[str, ...], str] = {}  # this process's jobs that failed before holding a run directory: why


def key(overrides) -> tuple[str, ...]:
    """What identifies a job among a sweep's: its overrides without the ones a re-run may add or change."""
    return tuple(sorted(str(o) for o in overrides
                        if not str(o).lstrip("+~").startswith(("train.resume=", "hydra.", "hydra/", "logger."))))


def failure_line(err: BaseException) -> str:
    """An unexpected exception as one line: its type and the first line of its message."""
    text = next((ln.strip() for ln in str(err).splitlines() if ln.strip()), "")
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def earlier_attempt(run_dir: Path, overrides) -> Path | None:
    """A sibling job directory of the same sweep with the same overrides (less train.resume, hydra.*, logger.*)
    that holds a run or a failure: where a sweep first started without `train.resume=auto` left the job, its
    directory named without it."""
    from omegaconf import OmegaConf

    wanted = key(overrides)
    for other in sorted(run_dir.parent.iterdir()):
        saved = other / ".hydra" / "overrides.yaml"
        if other == run_dir or not saved.exists():
            continue
        if not any((other / f).exists() for f in ("metrics.jsonl", "checkpoints", FAILED)):
            continue
        try:
            if key(OmegaConf.load(saved)) == wanted:
                return other
        except Exception:  # an unreadable overrides.yaml: not this job's
            continue
    return None


@dataclass
class Job:
    overrides: list[str]
    state: str  # finished, failed, stopped, not run
    path: Path | None = None
    why: str = ""


def _job_dirs(sweep_dir: Path) -> dict[tuple[str, ...], Path]:
    from omegaconf import OmegaConf

    found: dict[tuple[str, ...], Path] = {}
    if not sweep_dir.is_dir():
        return found
    for saved in sorted(sweep_dir.glob("*/.hydra/overrides.yaml"), key=lambda p: p.stat().st_mtime):
        try:
            found[key(OmegaConf.load(saved))] = saved.parent.parent  # the newest attempt wins
        except Exception:
            continue
    return found


def _state(path: Path) -> tuple[str, str]:
    from rapid_cli.report import read_job

    why = failed_earlier(path)
    if why is not None:
        return "failed", why
    unfinished = read_job(path / "metrics.jsonl").unfinished
    if not unfinished:
        return "finished", ""
    if not (path / "metrics.jsonl").exists():
        unfinished = "stopped before its first round"
    return "stopped", unfinished


def jobs(sweep_dir: Path, planned: list[list[str]] | None) -> list[Job]:
    """Every job of the sweep with its state. `planned`: the sweep's jobs in order (Hydra's basic sweeper),
    None when a sweeper chooses them as it goes (Optuna): then the jobs found in `sweep_dir` alone."""
    dirs = {**_job_dirs(sweep_dir), **{k: p for k, p in started.items() if p.exists()}}
    if planned is None:  # in the order of Hydra's job numbers (the directories' `<num>_` prefix)
        def number(k):
            head = dirs[k].name.split("_")[0]
            return (int(head) if head.isdigit() else 1 << 30, dirs[k].name)

        planned = [list(k) for k in sorted(dirs, key=number)]
    out = []
    for overrides in planned:
        path = dirs.get(key(overrides))
        if key(overrides) in refused:
            out.append(Job(overrides, "failed", why=refused[key(overrides)]))
        elif path is None:
            out.append(Job(overrides, "not run"))
        else:
            state, why = _state(path)
            out.append(Job(overrides, state, path, why))
    return out


def summary(sweep_dir: Path, planned: list[list[str]] | None, again: str) -> bool:
    """Prints the table of the sweep's jobs and, when any did not finish, the command that redoes only those.
    Returns whether every job finished."""
    from rich.markup import escape

    from rapid_cli.console import console

    found = jobs(sweep_dir, planned)
    if not found:
        return True
    counts = {s: sum(j.state == s for j in found) for s in ("finished", "failed", "stopped", "not run")}
    head = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    lines = [f"sweep {sweep_dir}: {len(found)} jobs, {head}"]

    def setting(j: Job, k: str) -> str | None:
        return next((o for o in key(j.overrides) if o.split("=", 1)[0] == k), None)

    names = {o.split("=", 1)[0] for j in found for o in key(j.overrides)}
    swept = {k for k in names if len({setting(j, k) for j in found}) > 1} or names

    def label(j: Job) -> str:  # the overrides that tell the jobs apart
        return " ".join(o for o in key(j.overrides) if o.split("=", 1)[0] in swept) or "(no overrides)"

    width = max(len(label(j)) for j in found)
    for j in found:
        where = f"  {j.path.name}" if j.path is not None else ""
        why = f"  ({j.why})" if j.why else ""
        lines.append(f"  {j.state:<9} {label(j):<{width}}{where}{why}")
    done = counts["finished"] == len(found)
    if not done:
        lines.append(f"run again to redo only the jobs that did not finish: {again}")
    console.print(escape("\n".join(lines)), soft_wrap=True, highlight=False)
    return done
