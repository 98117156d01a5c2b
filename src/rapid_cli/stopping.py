"""Stopping a run on a signal without losing work.

Ctrl-C (SIGINT), SIGTERM (what SLURM, `timeout`, `docker stop` and Kubernetes send before they kill) and
SIGUSR1 (what SLURM's `--signal` sends ahead of a time limit) all mean the same: finish the round that
is running, save a checkpoint, say how to resume, exit with 128 + the signal number. After SIGTERM,
finishing is bounded by `train.stop_grace_s`, because its sender kills for good soon after; a round that
does not end in time is abandoned, and so is any round when a second signal comes (SLURM's SIGTERM at
the time limit, after a SIGUSR1 whose round did not finish, is such a second signal). Abandoning never touches what is
on disk: the last checkpoint stays the newest (checkpoint writes are atomic).

A watchdog thread enforces the grace period (math-verify owns SIGALRM in the main thread): it delivers
one more SIGINT to the main thread, which the handler treats as a second signal.
"""

from __future__ import annotations

import _thread
import contextlib
import signal
import threading
from pathlib import Path

from rapid_cli.console import console

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)


class Interrupted(Exception):
    """A signal stopped the run after a round; `checkpoint` holds everything needed to resume it."""

    every_rank = True  # raised by all ranks at the same point (the stop is agreed on): an orderly end

    def __init__(self, rnd: int, checkpoint: Path, signum: int):
        super().__init__(f"{signal.Signals(signum).name}: stopped after round {rnd}")
        self.round, self.checkpoint, self.signum = rnd, checkpoint, signum


class Abandoned(BaseException):
    """A signal stopped the run mid-round (or before the first); nothing of that round was saved. A
    BaseException, like KeyboardInterrupt: code that turns errors into messages (a failed save) lets it pass."""

    def __init__(self, signum: int, why: str):
        super().__init__(f"{signal.Signals(signum).name}: {why}")
        self.signum = signum


class StopOnSignal:
    """Context manager around a run. `requested` (the signal number, or 0) tells the loop to save and stop
    at the end of the round; outside `rounds()` there is nothing to finish, so a signal abandons."""

    def __init__(self, grace_s: float | None):
        self.grace_s = grace_s
        self.requested = 0
        self._in_rounds = False
        self._watchdog: threading.Timer | None = None
        self._expired = False
        self._previous: dict = {}

    @contextlib.contextmanager
    def rounds(self):
        """From here on a signal finishes the round instead of abandoning the run."""
        self._in_rounds = True
        try:
            yield self
        finally:
            self._in_rounds = False

    def saving(self) -> None:
        """The save has begun: let it finish (it is atomic, and the kill that may follow cannot half-write it)."""
        if self._watchdog is not None:
            self._watchdog.cancel()

    def _handle(self, signum, frame):
        if self._expired:
            raise Abandoned(self.requested, f"the round did not finish within train.stop_grace_s={self.grace_s:g}")
        if self.requested:
            raise Abandoned(signum, "a second signal abandoned the round")
        if not self._in_rounds:
            raise Abandoned(signum, "stopped before the first round finished")
        self.requested = signum
        name = signal.Signals(signum).name
        bounded = self.grace_s and signum == signal.SIGTERM  # its sender kills for good soon after
        limit = f" (at most {self.grace_s:g} s)" if bounded else ""
        console.print(f"[yellow]{name}: finishing this round{limit}, then saving a checkpoint; "
                      "a second signal abandons the round[/]", soft_wrap=True)
        if bounded:
            self._watchdog = threading.Timer(self.grace_s, self._expire)
            self._watchdog.daemon = True
            self._watchdog.start()

    def _expire(self) -> None:
        self._expired = True
        _thread.interrupt_main(signal.SIGINT)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
        return self

    def __exit__(self, *exc):
        if self._watchdog is not None:
            self._watchdog.cancel()
        for s, handler in self._previous.items():
            signal.signal(s, handler)
