"""Run directories: one directory belongs to one run.

- `claim`: a fresh `outputs/<date>/<time>` is created atomically (with `-2`, `-3`, ... when another run
  started in the same second), before Hydra writes anything into it;
- `refuse_reuse`: a directory that already holds a run's metrics or checkpoints is only entered to
  resume it (`train.resume=...`), never to start over on top of it;
- `RunLock`: a process holds an exclusive lock on its run directory while it trains, so a second process
  (a resume started while the run still lives, a copy of the same command) stops with one line;
  `in_progress` asks the same lock beforehand, so such a process stops before Hydra starts;
- nothing is written into a run directory before its lock is held: `rapid train` turns off Hydra's own
  writing of `.hydra/` (written before the job starts) and writes the same three files itself under the lock
  (`save_hydra_files`).

- `record_failure`: a sweep job that fails leaves `FAILED` (its one-line error), read back by the sweep's
  table and `rapid report` (`failed_earlier`), removed when the job runs again (`clear_failure`).

Which earlier run `train.resume=auto` continues is resume.py's business (`same_run`).
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import os
import tempfile
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

from rapid_cli.errors import RapidError

if TYPE_CHECKING:
    from rapid_cli.config import Config

FAILED = "FAILED"

LOCK = ".rapid.lock"
CONFIG_SUBDIR_ENV = "RAPID_CONFIG_SUBDIR"  # set in a job whose .hydra/ rapid writes itself, once locked
RUN_FILES = ("metrics.jsonl", "checkpoints")
claimed: set[Path] = set()  # directories this process created for its run (not named by the user)


def claim(root: str | Path, now: _dt.datetime | None = None) -> Path:
    """Creates and returns `<root>/<date>/<time>`, or `<time>-N` when that exists already."""
    now = now or _dt.datetime.now()
    base = Path(root) / now.strftime("%Y-%m-%d") / now.strftime("%H-%M-%S")
    base.parent.mkdir(parents=True, exist_ok=True)
    for n in range(1, 10_000):
        path = base if n == 1 else base.with_name(f"{base.name}-{n}")
        try:
            path.mkdir()
            claimed.add(path.resolve())
            return path
        except FileExistsError:
            continue
    raise RapidError(f"could not create a run directory under {base.parent}")


def writable(path: Path) -> None:
    """Creates `path` if needed and checks a file can be written in it."""
    if path.exists() and not path.is_dir():
        raise RapidError(f"hydra.run.dir={path} is a file, not a directory; choose a directory for the run")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=path, prefix=".rapid-probe-")
        probe.close()
    except OSError as err:
        where = path if path.exists() else next((p for p in path.parents if p.exists()), path)
        raise RapidError(f"hydra.run.dir={path} cannot be written ({err.strerror}, at {where}); choose a writable "
                         "directory") from None


def holds_a_run(path: Path) -> bool:
    return any((path / f).exists() for f in RUN_FILES)


def in_progress(path: Path) -> str | None:
    """The pid of the rapid process training in `path` now (it holds the run's lock), else None. Asks with a
    shared lock, which the holder's exclusive one refuses, and lets it go at once."""
    try:
        fd = os.open(path / LOCK, os.O_RDONLY)
    except OSError:  # no lock file: no run has started there
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return None
    except BlockingIOError:
        return os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
    finally:
        os.close(fd)  # releases the shared lock, if taken


def busy(path: Path, pid: str) -> str:
    return (f"{path} holds a run in progress (pid {pid}); wait for it to end (or stop it), or use another "
            "hydra.run.dir (hydra.sweep.dir for a sweep)")


def refuse_reuse(path: Path, resuming: bool) -> None:
    """Before Hydra starts: a directory a live run trains in is refused (start or resume alike), and one holding
    a finished or stopped run is entered only to resume it."""
    pid = in_progress(path)
    if pid is not None:
        raise RapidError(busy(path, pid))
    if holds_a_run(path) and not resuming:
        raise RapidError(f"{path} already holds a run (metrics.jsonl, checkpoints); continue it with "
                         "train.resume=auto, or start a new one in another hydra.run.dir")


class RunLock:
    """An exclusive advisory lock on `<run_dir>/.rapid.lock`, held while the run trains."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / LOCK
        self._fd: int | None = None

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise RapidError(busy(self.path.parent, owner)) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc):
        if self._fd is not None:
            os.close(self._fd)  # releases the lock
            self._fd = None


def save_hydra_files(run_dir: Path, cfg: Config) -> None:
    """What Hydra writes into `<run_dir>/.hydra/` before a job starts (config.yaml, hydra.yaml, overrides.yaml),
    written by the job itself while it holds the run's lock (`CONFIG_SUBDIR_ENV` names the subdirectory)."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    subdir = os.environ.get(CONFIG_SUBDIR_ENV)
    if not subdir:
        return
    out = run_dir / subdir
    out.mkdir(parents=True, exist_ok=True)
    hydra_cfg = HydraConfig.instance().cfg  # {"hydra": ...}, as Hydra saves it
    overrides = hydra_cfg.hydra.overrides.task
    for name, node in (("config.yaml", cfg), ("hydra.yaml", hydra_cfg), ("overrides.yaml", overrides)):
        (out / name).write_text(OmegaConf.to_yaml(node), encoding="utf-8")


def record_failure(run_dir: Path, message: str, err: BaseException | None = None) -> None:
    """Writes `<run_dir>/FAILED`: the one-line error, then the traceback of an unexpected exception `err`."""
    text = message + "\n"
    if err is not None:
        text += "\n" + "".join(traceback.format_exception(type(err), err, err.__traceback__))
    try:
        (run_dir / FAILED).write_text(text, encoding="utf-8")
    except OSError:  # a full or read-only disk: the sweep's table still says why
        pass


def clear_failure(run_dir: Path) -> None:
    (run_dir / FAILED).unlink(missing_ok=True)


def failed_earlier(run_dir: Path) -> str | None:
    """The one-line error a failed job left in `run_dir`, else None."""
    try:
        return (run_dir / FAILED).read_text(encoding="utf-8", errors="replace").splitlines()[0].strip() or "failed"
    except (OSError, IndexError):
        return None
