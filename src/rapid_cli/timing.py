"""Phase timing: `with timer("generate"):` both heads a phase and records `time/generate` for the logs."""

from __future__ import annotations

import time
from contextlib import contextmanager


class PhaseTimer:
    def __init__(self, elapsed: float = 0.0, totals: dict[str, float] | None = None, on_start=None):
        """`elapsed` and `totals` carry a resumed run's clock forward; `on_start(phase)` is told when a phase
        begins (the console shows it)."""
        self.on_start = on_start
        self.start = time.perf_counter() - elapsed
        self._round: dict[str, float] = {}
        self.totals: dict[str, float] = dict(totals or {})

    @contextmanager
    def __call__(self, phase: str):
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
        out = {f"time/{k}": v for k, v in self._round.items()}
        self._round = {}
        return out
