"""One facade for run output: rich console (progress + live line), metrics.jsonl, and Weights & Biases.

Metric keys are namespaced: train/ reward/ eval/ time/ iw/ perf/. Every record carries `round` and
`time/elapsed` (wall-clock seconds since the run started) so curves can be drawn against time.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from rapid_cli.console import console, warn
from rapid_cli.timing import PHASES

if TYPE_CHECKING:
    from rapid_cli.config import Config


def read_rows(path: Path, problems: list[str] | None = None) -> list[dict]:
    """A metrics.jsonl's whole records (none when there is no file); a last line cut short by a crash is left
    out. Any other line that is not a JSON record (binary bytes, a damaged disk) is left out too, and said in
    `problems` (e.g. "line 3 is not UTF-8 text"), where given."""
    if not path.exists():
        return []
    rows = []
    lines = path.read_bytes().split(b"\n")
    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        why = None
        try:
            row = json.loads(raw.decode("utf-8"))
            if not isinstance(row, dict):
                why = "is not a JSON record"
        except UnicodeDecodeError:
            why = "is not UTF-8 text"
        except json.JSONDecodeError:
            if number == len(lines):  # the last line, without its newline: a write cut short
                continue
            why = "is not a JSON record"
        if why:
            if problems is not None:
                problems.append(f"line {number} {why}")
            continue
        rows.append(row)
    return rows


def status_line(m: dict) -> str:
    """The live one-liner: reward, importance weights, throughput, seconds per phase."""
    parts = [f"reward {m.get('reward/mean', float('nan')):.3f}"]
    if "iw/mean" in m:
        parts.append(f"iw {m['iw/mean']:.3f} (max {m['iw/max']:.2f}, clip {100 * m.get('iw/clip_frac', 0):.0f}%)")
    if "perf/gen_tokens_per_s" in m:
        parts.append(f"{m['perf/gen_tokens_per_s']:.0f} tok/s")
    times = " ".join(f"{p[:3]} {m[p.key]:.1f}s" for p in PHASES if p.key in m)
    if "eval/pass@1" in m:
        parts.append(f"eval pass@1 {m['eval/pass@1']:.3f}")
    return " | ".join(parts + [times])


class RunLogger:
    def __init__(self, cfg: Config, run_dir: Path, total_rounds: int, run_name: str, resume_round: int | None = None,
                 wandb_id: str | None = None):
        self.run_dir = run_dir
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = run_dir / "metrics.jsonl"
        self.history: list[dict] = self._resume_history(resume_round) if resume_round is not None else []
        self._fd = os.open(self.metrics_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._good_size = os.fstat(self._fd).st_size
        self._pending: list[str] = []
        self._warned_write = False
        self.samples_every = cfg.logger.wandb.samples_every
        self.wandb = self._init_wandb(cfg, run_name, wandb_id)
        self.progress = None
        if cfg.logger.live and console.is_terminal:
            self.progress = Progress(
                TextColumn("[bold]round"),
                MofNCompleteColumn(),
                BarColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[status]}"),
                console=console,
                transient=False,
            )
            self.progress.start()
            self._bar = self.progress.add_task("rounds", total=total_rounds, status="starting")

    def _resume_history(self, resume_round: int) -> list[dict]:
        """Records up to the checkpoint's round; later ones (the rounds being redone) move to a backup file."""
        if not self.metrics_path.exists():
            return []
        lines = self.metrics_path.read_text(encoding="utf-8", errors="replace").splitlines()
        kept = [r for r in read_rows(self.metrics_path) if r.get("round", 0) <= resume_round]
        if len(kept) < len(lines):
            backup = self.metrics_path.with_name(f"metrics.before-resume-{resume_round}.jsonl")
            backup.write_text("\n".join(lines) + "\n", encoding="utf-8")
            tmp = self.metrics_path.with_suffix(".tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
            os.replace(tmp, self.metrics_path)
        return kept

    def _write_pending(self) -> None:
        """Appends the rows not yet on disk. A full disk or a quota keeps them in memory (said once) and
        cuts the file back to its last whole row, so metrics.jsonl never holds half a record."""
        data = "".join(self._pending).encode("utf-8")
        try:
            written = 0
            while written < len(data):
                written += os.write(self._fd, data[written:])
            self._good_size += len(data)
            self._pending.clear()
        except OSError as err:
            try:
                os.ftruncate(self._fd, self._good_size)
            except OSError:
                pass
            if not self._warned_write:
                warn(f"could not write {self.metrics_path} ({err.strerror or err}); keeping the rows in memory and "
                     "retrying each round")
                self._warned_write = True

    @property
    def wandb_id(self) -> str | None:
        return getattr(self.wandb, "id", None)

    def _init_wandb(self, cfg: Config, run_name: str, run_id: str | None = None):
        mode = cfg.logger.wandb.mode
        if mode == "disabled":
            return None
        try:
            os.environ.setdefault("WANDB_SILENT", "true")
            import wandb
            from omegaconf import OmegaConf

            if mode == "online":
                from rapid_cli.hub import unreachable

                why = unreachable(wandb.Settings().base_url)
                if why:  # wandb.init would retry for about 90 s before giving up
                    warn(f"W&B online: {why}; logging offline instead (upload later with `wandb sync`)")
                    mode = "offline"
            return wandb.init(
                project=cfg.logger.wandb.project,
                entity=cfg.logger.wandb.entity,
                name=cfg.logger.wandb.name or run_name,
                mode=mode,
                dir=str(self.run_dir),
                config=OmegaConf.to_container(cfg, resolve=True),
                id=run_id,
                resume="allow" if run_id else None,
            )
        except Exception as err:  # W&B trouble must never stop training
            warn(f"W&B disabled for this run ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})")
            return None

    def log(self, metrics: dict, step: int) -> None:
        record = {"round": step, **metrics}
        self.history.append(record)
        self._pending.append(json.dumps(record) + "\n")
        self._write_pending()
        if self.wandb is not None:
            try:
                self.wandb.log(metrics, step=step)
            except Exception as err:
                warn(f"W&B log failed, continuing without it ({err})")
                self.wandb = None

    def phase(self, name: str) -> None:
        """The bar shows what runs now (the round's numbers go on their own line when it ends)."""
        if self.progress is not None:
            self.progress.update(self._bar, status=f"[dim]{name}[/]")

    def round_done(self, metrics: dict, rnd: int) -> None:
        # One line per round that stays on screen (above the bar in a terminal), never cut to the width.
        console.print(f"round {rnd}: {status_line(metrics)}", soft_wrap=True)
        if self.progress is not None:
            self.progress.update(self._bar, completed=rnd)

    def where(self, checkpoint: Path | None, task_args: str) -> None:
        """Where the run's results are, and the command to try the trained model."""
        files = [("metrics", self.metrics_path), ("curves", self.run_dir / "curves.png")]
        if checkpoint is not None:
            files.append(("checkpoint", checkpoint))
        for label, path in files:
            console.print(f"{label + ':':<12}{path}")
        if checkpoint is not None:  # pastes as printed: the path quoted for Hydra and the shell, no markup read
            from rich.markup import escape

            from rapid_cli.overrides import override

            weights = checkpoint / "adapter" if (checkpoint / "adapter").is_dir() else checkpoint / "model"  # LoRA
            console.print(f"{'try it:':<12}rapid eval {escape(override('model.path', str(weights)))} "
                          f"{escape(task_args)}")

    def samples(self, rows: list[tuple[str, str, float]], rnd: int, printed: int) -> None:
        """Prints `printed` completions; every `logger.wandb.samples_every` rounds a W&B table of up to 16."""
        for question, completion, reward in rows[:printed]:
            text = completion.strip().replace("\n", " ")
            console.print(f"  [dim]{question[:60]!r} -> {text[:80]!r} reward {reward:g}[/]", soft_wrap=True)
        if self.wandb is not None and self.samples_every and rnd % self.samples_every == 0:
            try:
                import wandb

                table = wandb.Table(columns=["round", "prompt", "completion", "reward"],
                                    data=[[rnd, q, c, r] for q, c, r in rows[:16]])
                self.wandb.log({"samples/completions": table}, step=rnd)
            except Exception as err:
                warn(f"W&B samples table failed, continuing ({err})")

    def close(self, summary: dict | None = None) -> None:
        """Safe to call again (the run's cleanup closes whatever an early exit left open)."""
        if self._fd is None:
            return
        if self.progress is not None:
            self.progress.stop()
        if self._pending:
            self._write_pending()
        os.close(self._fd)
        self._fd = None
        if self._pending:
            from rapid_cli.errors import RapidError

            raise RapidError(f"{len(self._pending)} rounds of metrics could not be written to {self.metrics_path} "
                             "(disk full or not writable); the checkpoints hold the run: free space and resume with "
                             "train.resume=auto")
        if summary:
            table = Table(title="run summary", show_header=True)
            table.add_column("metric")
            table.add_column("value", justify="right")
            for key, value in summary.items():
                table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
            console.print(table)
        if self.wandb is not None:
            try:
                self.wandb.finish()
                if self.wandb.settings.mode == "offline":
                    console.print(f"W&B offline run saved; upload it with: wandb sync "
                                  f"{self.wandb.dir.rsplit('/files', 1)[0]}", soft_wrap=True)
            except Exception as err:
                warn(f"W&B finish failed ({err})")


class NullLogger:
    """What ranks other than 0 log with: nothing (rank 0 writes the run's files)."""

    history: list[dict] = []
    wandb_id = None

    def log(self, metrics: dict, step: int) -> None:
        pass

    def phase(self, name: str) -> None:
        pass

    def round_done(self, metrics: dict, rnd: int) -> None:
        pass

    def where(self, checkpoint, task_args: str) -> None:
        pass

    def samples(self, rows, rnd: int, printed: int) -> None:
        pass

    def close(self, summary: dict | None = None) -> None:
        pass
