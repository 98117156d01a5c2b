"""Where each round's log pi_old comes from (algo.old_logprobs), and whether the sampler's may stand in.

`recompute` runs the trainer's model over the round before the first update (the authors' choice: an
inference engine's numerics differ from the trainer's). The first mini-batch needs none of it: nothing
has been updated yet, so its pi_old is the current policy (rows left out of `Rollouts.old_rows`; the
learner's step takes its own detached log-probs for them). `sampler` takes the sampler's log-probs for
every row. `auto` recomputes until the sampler has passed the audit, then takes the sampler's for the
rows past the first mini-batch.

The audit costs nothing: the round's first step runs the policy, still pi_old, over the first mini-batch,
and compares those log-probs with the sampler's for the same rows, every round and in every mode
(`iw/sampler_seq_logw_gap_max`, the worst |sum_t gap| of a sequence, over all ranks: learner.Audit).
`auto` trusts the sampler after a round whose audit is within `algo.sampler_logw_tol`, but only a round
sampled after one of this run's weight syncs (a sync that drops or garbles weights shows only then); an
audit that fails later revokes the trust. The trust is checkpointed with the settings it was earned under
(`settings`: sampler, engine dtype, precision, parallel layout, temperature, top_p) and dropped on a
resume that changed any of them.
"""

from __future__ import annotations

import torch

from rapid_cli.config import AlgoConfig, EngineCorrection, OldLogprobs
from rapid_cli.console import console
from rapid_cli.distributed import Dist
from rapid_cli.learner import AUDIT_KEY, Learner
from rapid_cli.types import Rollouts


class BehaviourLogprobs:
    def __init__(self, algo: AlgoConfig, d: Dist, settings: dict, saved: dict | None = None,
                 gap: float | None = None):
        self.mode, self.tol, self.settings = algo.old_logprobs, algo.sampler_logw_tol, settings
        self.correction = algo.engine_correction
        # the last audit's gap (None: none yet, or audited under other settings): `auto` engine correction's input
        self.gap = gap if saved and saved.get("settings") == settings else None
        self.first_rows = algo.prompts_per_step // d.world * algo.group_size
        self.on_policy = algo.steps_per_generation == 1  # A=1: the one step's detached log-probs are pi_old
        self.trusted = bool(saved and saved.get("trusted") and saved.get("settings") == settings)
        self.synced = False  # whether this run has synced updated weights into the sampler yet
        if saved and saved.get("trusted") and not self.trusted and self.mode == OldLogprobs.auto:
            console.print("[dim]algo.old_logprobs=auto: sampler/precision/parallel settings changed since "
                          "the checkpoint; recomputing pi_old until the sampler passes the audit again[/]")

    def own_rows(self, ro: Rollouts) -> torch.Tensor:
        """[B] bool: the rows whose pi_old will be their step's own detached log-probs (not in `old_rows`):
        every row on-policy or when the sampler reports no log-probs, none with `sampler`, else the round's
        first mini-batch. Known before any forward pass (Learner.moving_rows decides on it)."""
        B = len(ro.rewards)
        if self.on_policy or (ro.sampler_logprobs is None and self.mode == OldLogprobs.sampler):
            return torch.ones(B, dtype=torch.bool)
        if self.mode == OldLogprobs.sampler:
            return torch.zeros(B, dtype=torch.bool)
        return torch.arange(B) < self.first_rows

    def __call__(self, learner: Learner, ro: Rollouts) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(old_logprobs [B, T], old_rows [B]) for `ro` (Rollouts' fields; None, None: on-policy). Rows
        outside `ro.moving` are not computed (0)."""
        sampled = ro.sampler_logprobs  # None: the sampler reports none that are the trainer's quantity
        if self.on_policy:
            return None, None
        if self.mode == OldLogprobs.sampler:
            return sampled, None
        past_first = torch.arange(len(ro.rewards)) >= self.first_rows  # [B]
        if self.trusted and sampled is not None:
            return sampled, past_first
        old = torch.zeros_like(ro.completion_mask)
        old[self.first_rows :] = learner.logprobs(ro, slice(self.first_rows, None))
        return old, past_first

    def engine_correction(self, ro: Rollouts) -> str:
        """The engine correction for this round's steps (none | tis | mis; algorithms/engine.py). None is needed
        where pi_old is the sampler's own log-probs (`sampler` mode past A = 1: the ratio is 1; on-policy pi_old is
        the step's own log-probs in every mode) or where the sampler reports no mu (top_p < 1: an explicit tis/mis
        was refused at start); `auto` corrects by tis when the last audit found a gap above
        algo.sampler_logw_tol, or, before any audit, when engine or trainer compute in 16 bits."""
        pi_old_is_mu = self.mode == OldLogprobs.sampler and not self.on_policy
        if (self.correction == EngineCorrection.none or pi_old_is_mu
                or ro.sampler_logprobs is None or self.settings.get("top_p", 1.0) < 1):
            return "none"
        if self.correction != EngineCorrection.auto:
            return str(self.correction)
        if self.gap is None:
            reduced = self.settings.get("engine_dtype") not in (None, "float32") or self.settings.get(
                "mixed_precision") == "bf16"
            return "tis" if reduced else "none"
        return "tis" if self.gap > self.tol else "none"

    def after_round(self, audit: dict) -> None:
        """Takes the round's audit metrics (the same on every rank: taken over all ranks), once its weights
        were synced."""
        gap = audit.get(AUDIT_KEY)
        if gap is not None:
            self.gap = gap
        if self.mode == OldLogprobs.auto and not self.on_policy and gap is not None:
            if self.trusted and gap > self.tol:
                self.trusted = False
                console.print(f"[yellow]algo.old_logprobs=auto: the sampler's log-probs drifted from the "
                              f"trainer's (log w gap {gap:.1e} > {self.tol:g}); recomputing pi_old again "
                              "from the next round on[/]")
            elif not self.trusted and self.synced and gap <= self.tol:
                self.trusted = True
                console.print(f"[dim]algo.old_logprobs=auto: the sampler's log-probs match the trainer's "
                              f"(log w gap {gap:.1e} <= {self.tol:g}); using them from the next round on, "
                              "audited every round[/]")
        self.synced = True

    def state(self) -> dict:
        return {"trusted": self.trusted, "settings": self.settings}
