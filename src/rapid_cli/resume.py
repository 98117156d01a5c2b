"""Going on where a run stopped: which run and checkpoint `train.resume` means, the trainer state a
checkpoint carries beside the weights, and the command that resumes a stopped run.

    train.resume=auto        the newest intact checkpoint of this run directory; in a directory rapid
                             claimed itself, the newest earlier run with the same overrides and config;
                             when there is none, a new run, and the closest earlier one (a few keys
                             apart, e.g. train.rounds raised) is named with the command continuing it
    train.resume=<dir>       that checkpoint, or the newest one of that run directory

A resume is refused when the model or task config differs from the checkpoint's (checkpoint.FIXED_GROUPS).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

from rapid_cli import checkpoint
from rapid_cli.console import console, warn
from rapid_cli.errors import RapidError
from rapid_cli.logger import read_rows
from rapid_cli.rundir import claimed, in_progress

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from rapid_cli.config import Config


@dataclass
class TrainerState:
    """Everything but the weights a run needs to continue exactly (trainer_state.pt, written and read only
    through `to_dict`/`from_dict`). A fresh run starts from the defaults."""

    round: int = 0  # rounds completed
    cursor: int = 0  # training problems the prompt stream has served
    optimizer: dict | None = None  # optimizer state (full, also under FSDP)
    scheduler: dict | None = None  # learning-rate schedule position
    rng: dict | None = None  # checkpoint.rng_state() at the end of the round
    totals: dict = field(default_factory=lambda: {"perf/samples": 0, "perf/gen_tokens": 0})  # cumulative counters
    first_eval: dict = field(default_factory=dict)  # the eval before round 1 (reported as "before")
    elapsed: float = 0.0  # wall-clock seconds of the run so far, resumes included
    phase_totals: dict | None = None  # seconds per phase so far
    wandb_id: str | None = None  # the W&B run a resume continues
    sampler_trust: dict | None = None  # BehaviourLogprobs.state(): whether the sampler's log-probs are trusted
    engine_gap: float | None = None  # the last sampler audit's gap (BehaviourLogprobs.gap), for the engine correction

    def to_dict(self) -> dict:
        """Plain Python and tensors only: torch.load(weights_only=True) refuses other classes (a config Enum)."""
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, saved: dict) -> TrainerState:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in saved.items() if k in known})


def _plain(value):
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_plain(v) for v in value)
    return value


def resume_point(cfg: Config, run_dir: Path, main: bool = True) -> tuple[Path | None, TrainerState]:
    """The checkpoint `train.resume` points at (None: a fresh run) and its trainer state. A run directory with
    no checkpoint left either holds a finished run (`finished_earlier`, asked first) or starts afresh here."""
    if not cfg.train.resume:
        return None, TrainerState()
    path = checkpoint.find(cfg.train.resume, run_dir / "checkpoints")
    if path is None:
        return None, _afresh(cfg.train.resume, run_dir, main)
    conflicts = checkpoint.config_conflicts(path, cfg)
    if conflicts:
        raise RapidError(f"cannot resume from {path}: the model/task config differs ({'; '.join(conflicts)}); "
                         "drop those overrides, or start a new run without train.resume")
    state = TrainerState.from_dict(checkpoint.load_state(path))
    source = path.parent.parent if path.parent.name == "checkpoints" else None
    if main and source is not None and source.resolve() != run_dir.resolve() and (pid := in_progress(source)):
        warn(f"train.resume={cfg.train.resume}: {source} is still training (pid {pid}); this run branches from its "
             f"round-{state.round} checkpoint into {run_dir}; both go on")
    return path, state


def finished_earlier(resume: str | None, rounds: int, run_dir: Path) -> list[dict] | None:
    """The metrics of a run in `run_dir` that ran all its planned `rounds` and kept no checkpoint (published
    results, or checkpoints pruned to free disk): `train.resume` has nothing to redo there."""
    if not resume or checkpoint.checkpoints(run_dir / "checkpoints"):
        return None
    rows = read_rows(run_dir / "metrics.jsonl")
    if max((r.get("round", 0) for r in rows), default=0) < rounds:
        return None
    console.print(f"train.resume={resume}: {run_dir / 'metrics.jsonl'} already holds the last round "
                  f"({rounds}) and no checkpoint is kept; nothing to do", soft_wrap=True)
    return rows


def _afresh(resume: str, run_dir: Path, main: bool) -> TrainerState:
    """A fresh start where there is no checkpoint to continue from. The rows an earlier, unfinished run left
    move aside first (metrics.before-restart.jsonl), so one metrics.jsonl never holds two runs."""
    metrics = run_dir / "metrics.jsonl"
    kept = ""
    if main and metrics.exists() and metrics.stat().st_size:
        backup, n = metrics.with_name("metrics.before-restart.jsonl"), 1
        while backup.exists():  # an earlier restart's rows stay
            n += 1
            backup = metrics.with_name(f"metrics.before-restart-{n}.jsonl")
        os.replace(metrics, backup)
        kept = f" (the earlier run's rows: {backup})"
    console.print(f"[dim]train.resume={resume}: no checkpoint in {run_dir}, starting afresh{kept}[/]",
                  soft_wrap=True)
    return TrainerState()


def resume_command(overrides: list[str], run_dir: Path) -> str:
    """The command that continues the run in `run_dir` (printed when a run stops early); it pastes as printed:
    each override (already in Hydra's grammar) quoted for the shell, the directory for Hydra and the shell."""
    from rapid_cli.overrides import override, shell_arg

    again = [shell_arg(o) for o in overrides if not o.startswith(("train.resume=", "hydra.run.dir="))]
    return " ".join(["rapid train", *again, override("hydra.run.dir", str(run_dir)), "train.resume=auto"])


def _comparable_config(run_dir: Path, config: DictConfig | None = None) -> dict | None:
    """The run's composed config (`config`, else its saved .hydra/config.yaml) without the keys that may differ
    between a run and its resumption."""
    from omegaconf import OmegaConf

    path = run_dir / ".hydra" / "config.yaml"
    if config is None and not path.exists():
        return None
    # through YAML either way, so an enum in memory compares equal to its saved name
    cfg = OmegaConf.to_container(OmegaConf.create(OmegaConf.to_yaml(config)) if config is not None
                                 else OmegaConf.load(path))
    cfg.get("train", {}).pop("resume", None)
    cfg.pop("logger", None)
    return cfg


def same_run(run_dir: Path, overrides: list[str], config: DictConfig | None = None) -> Path:
    """For `train.resume=auto` in a directory `claim` made: the newest earlier run under the same output
    root that was started with the same overrides and config and has an intact checkpoint; else `run_dir`.
    A directory the user named (hydra.run.dir=) is the run to resume, never a reason to look elsewhere.
    `config`: this job's composed config (else read from `run_dir`'s .hydra/)."""
    if run_dir.resolve() not in claimed:
        return run_dir
    from omegaconf import OmegaConf

    def key(items) -> list[str]:
        return sorted(o for o in items if not o.startswith(("train.resume=", "hydra.", "logger.")))

    wanted, config = key(overrides), _comparable_config(run_dir, config)
    candidates = []
    for other in run_dir.parent.parent.glob("*/*"):
        saved = other / ".hydra" / "overrides.yaml"
        if other == run_dir or not saved.exists() or not checkpoint.checkpoints(other / "checkpoints"):
            continue
        if key(OmegaConf.load(saved)) != wanted or _comparable_config(other) != config:
            continue
        try:
            checkpoint.find("auto", other / "checkpoints")
        except RapidError:
            continue  # no intact checkpoint: not a run to continue
        candidates.append(other)
    if not candidates:
        near = closest_run(run_dir, config)
        if near is not None:
            from rich.markup import escape

            console.print(escape(continue_hint(run_dir, overrides, *near)), soft_wrap=True, highlight=False)
        return run_dir
    found = max(candidates, key=lambda p: p.stat().st_mtime)
    console.print(f"[dim]train.resume=auto: continuing the run in {found}[/]", soft_wrap=True)
    return found


def _flat(node, prefix: str = "") -> dict:
    out = {}
    for k, v in (node or {}).items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def closest_run(run_dir: Path, config: DictConfig, most: int = 3
                ) -> tuple[Path, list[tuple[str, object, object]]] | None:
    """For `train.resume=auto` that found no run to continue (`same_run`): the earlier run under the same output
    root with a checkpoint whose composed config differs from this one (`config`, comparable as
    `_comparable_config` makes it) in the fewest keys -- at most `most`, none of model.* or task.* (a resume
    refuses those) -- the newest among equals; with those keys as (key, its value, this run's value)."""
    if not config:
        return None
    mine = _flat(config)
    best = None
    for other in run_dir.parent.parent.glob("*/*"):
        if other == run_dir or not (other / ".hydra" / "config.yaml").exists():
            continue
        if not checkpoint.checkpoints(other / "checkpoints"):
            continue
        try:
            theirs = _flat(_comparable_config(other))
        except Exception:  # an unreadable saved config: not a run to name
            continue
        keys = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        if len(keys) > most or any(k.startswith(tuple(f"{g}." for g in checkpoint.FIXED_GROUPS)) for k in keys):
            continue
        rank = (len(keys), -other.stat().st_mtime)
        if best is None or rank < best[0]:
            best = (rank, other, [(k, theirs.get(k, "(unset)"), mine.get(k, "(unset)")) for k in keys])
    return None if best is None else (best[1], best[2])


def continue_hint(run_dir: Path, overrides: list[str], near: Path, keys: list[tuple[str, object, object]]) -> str:
    """One line: the earlier run closest to this one, the keys that differ, and the command that continues it
    (`train.resume=<dir>`: from its newest checkpoint, with this command's settings, e.g. train.rounds raised)."""
    from rapid_cli.overrides import override, shell_arg

    last = checkpoint.checkpoints(near / "checkpoints")[-1]
    done = int(last.name.rsplit("-", 1)[-1]) if last.name.rsplit("-", 1)[-1].isdigit() else None
    differ = ", ".join(f"{k} {a} -> {b}" for k, a, b in keys) or "only in how its overrides are written"
    again = [shell_arg(o) for o in overrides if not o.startswith(("train.resume=", "hydra.run.dir="))]
    command = " ".join(["rapid train", *again, override("train.resume", str(near))])
    rounds = dict((k, (a, b)) for k, a, b in keys).get("train.rounds")
    if rounds is not None and isinstance(rounds[1], int) and done is not None and rounds[1] > done:
        how = f"to continue it from its round-{done} checkpoint to round {rounds[1]}"
    else:
        how = (f"to continue it from its {last.name} checkpoint (with train.rounds raised above "
               f"{done if done is not None else 'its last round'})")
    return (f"train.resume=auto: no earlier run has these overrides, so this is a new run in {run_dir}; the closest "
            f"earlier run, {near}, differs in {differ}; {how}: {command}")
