"""Phase timing: `with timer(Phase.GENERATE):` both heads a phase and records `time/generate` for the logs."""

from __future__ import annotations

import time
from contextlib import contextmanager
from enum import StrEnum


class Phase(StrEnum):
    """The phases of a round, in data-flow order; their values name the console's headings and the
    `time/<phase>` metrics that the logger, `rapid report` and the scripts read."""

    GENERATE = "generate"
    REWARD = "reward"
    OLD_LOGPROBS = "old_logprobs"
    REF_LOGPROBS = "ref_logprobs"
    UPDATE = "update"
    SYNC = "sync"
    EVAL = "eval"

    @property
    def key(self) -> str:
        return f"time/{self.value}"


PHASES = tuple(Phase)


class PhaseTimer:
    def __init__(self, elapsed: float = 0.0, totals: dict[str, float] | None = None, on_start=None):
        """`elapsed` and `totals` carry a resumed run's clock forward; `on_start(phase)` is told when a phase
        begins (the console shows it)."""
        self.on_start = on_start
        self.start = time.perf_counter() - elapsed
        self._round: dict[str, float] = {}
        self.totals: dict[str, float] = dict(totals or {})

    @contextmanager
    def __call__(self, phase: Phase):
        phase = Phase(phase).value  # plain str keys: the totals are checkpointed
        if self.on_start is not None:
            self.on_start(phase)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            dt = time.perf_counter() - t0
            self._round[phase] = self._round.get(phase, 0.0) + dt
            self.totals[phase] = self.totals.get(phase, 0.0) + dt

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def pop_round(self) -> dict[str, float]:
        """This round's seconds per phase as `time/<phase>` metrics, then start a new round."""
        out = {Phase(k).key: v for k, v in self._round.items()}
        self._round = {}
        return out
