"""The algorithm registry: every record agrees with its loss, its preset and the config schema."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from conftest import REPO, compose
from rapid_cli.algorithms import ALGORITHMS, check, get
from rapid_cli.algorithms.contract import METRICS, LossBatch, LossOutput
from rapid_cli.algorithms.engine import engine_weights
from rapid_cli.config import AlgoConfig
from rapid_cli.distributed import Dist
from rapid_cli.errors import RapidError
from rapid_cli.learner import LossTotals, StepStats, update_metrics


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_each_record_matches_its_loss_preset_and_schema(name):
    algorithm = ALGORITHMS[name]
    params = algorithm.objective.options  # the options the loss takes, with the values it uses when not given
    schema = AlgoConfig.__dataclass_fields__
    for option in algorithm.options:  # a typo in a record would pass a field the loss does not take
        assert option in params and params[option] is not inspect.Parameter.empty, (name, option)
        assert option in schema, (name, option)
    assert algorithm.objective.reference == algorithm.reference
    preset = OmegaConf.load(Path(REPO) / "conf" / "algo" / f"{name}.yaml")
    assert preset.name == name
    assert (preset.steps_per_generation == 1) == algorithm.on_policy
    assert algorithm.needs_reference(compose([f"algo={name}"]).algo) == bool(preset.get("kl_beta", 0))


def test_unknown_names_and_unused_options_are_refused_in_one_line():
    choices = "dapo, dr_grpo, grpo, pg, rapid"
    with pytest.raises(RapidError, match=rf"^algo.name='ppo' is unknown; choose one of {choices}$"):
        get("ppo")
    with pytest.raises(RapidError, match=r"^algo.kl_beta=0.1 has no effect with algo.name=dapo"):
        check(compose(["algo=dapo", "algo.kl_beta=0.1"]).algo)
    check(compose(["algo=grpo"]).algo)


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
@pytest.mark.parametrize("correction", ["tis", "mis"])
def test_every_metric_an_algorithm_reports_is_declared(name, correction):
    """Each metric a loss reports (with the engine correction's beside it) says how it combines and whether it
    is logged (contract.METRICS): the learner combines each as declared and refuses any other."""
    algorithm = ALGORITHMS[name]
    options = algorithm.loss_options(compose([f"algo={name}"]).algo)
    if algorithm.reference:
        options["kl_beta"] = 0.04  # pg's preset turns the KL term off; its metric is reported when it is on
    torch.manual_seed(0)
    old = -torch.rand(4, 3) * 2
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]], dtype=torch.float32)
    weights, stats = engine_weights(old, old - 0.3, mask, correction, cap=2.0)
    batch = LossBatch((old + 0.1).requires_grad_(True), old, mask, torch.tensor([1.0, 0.0, 1.0, 1.0]), 2,
                      ref_logprobs=old * mask if algorithm.reference else None, token_weights=weights)
    out = algorithm.compute(batch, options)
    reported = out.metrics | stats
    assert not set(reported) - set(METRICS), set(reported) - set(METRICS)
    assert {"iw_mean", "iw_max", "iw_sum", "iw_sq_sum", "ess"} <= set(reported)
    if algorithm.reference:
        assert "kl" in reported
    totals = LossTotals()
    totals.add(out.loss.item(), reported, rows=4)
    assert set(totals.row_sums) | set(totals.maxima) | set(totals.sums) == set(reported) - {"ess"}


def test_an_undeclared_metric_fails_where_it_is_reported():
    with pytest.raises(ValueError, match="loss metric 'iw_median' is not declared"):
        LossOutput(torch.tensor(0.0), {"iw_mean": 1.0, "iw_median": 1.0})
    with pytest.raises(ValueError, match="loss metric 'iw_median' is not declared"):
        LossTotals().add(0.0, {"iw_median": 1.0}, rows=2)


def test_a_steps_metrics_combine_over_micro_batches_as_declared():
    totals = LossTotals()
    totals.add(1.0, {"iw_mean": 1.0, "iw_max": 3.0, "iw_sum": 2.0, "iw_sq_sum": 5.0, "ess": 0.8, "kl": 0.1}, rows=2)
    totals.add(0.5, {"iw_mean": 2.0, "iw_max": 2.0, "iw_sum": 4.0, "iw_sq_sum": 7.0, "ess": 1.0, "kl": 0.3}, rows=6)
    means, maxima, sums = totals.over_ranks(Dist(), rows=8)
    assert totals.loss == 1.5
    assert means == pytest.approx({"iw_mean": (2 * 1.0 + 6 * 2.0) / 8, "kl": (2 * 0.1 + 6 * 0.3) / 8})
    assert maxima == {"iw_max": 3.0} and sums == {"iw_sum": 6.0, "iw_sq_sum": 12.0}  # ess: each batch's own


def test_a_rounds_metrics_are_logged_under_their_names():
    """update_metrics over two steps: every logged name (tests, docs/ and results depend on them), the loss's
    row means averaged over the steps that have them, maxima over all."""
    first = {"iw_mean": 1.0, "iw_clipped_mean": 0.9, "iw_clip_frac": 0.1, "staleness": 0.2, "log_ratio_abs_mean": 0.3,
             "adv_abs_mean": 0.4, "ppo_clip_frac": 0.05, "kl": 0.01, "groups_dropped_frac": 0.25,
             "engine_weight_mean": 0.95, "engine_truncated_frac": 0.02, "engine_masked_frac": 0.0, "adv_mean": 0.0}
    steps = [StepStats(1.0, 2.0, 0.1, False, 3.0, first, {"iw_max": 4.0, "engine_ratio_max": 1.5}, rows=4,
                       skipped_rows=1),
             StepStats(3.0, 4.0, 0.05, True, 5.0, {"iw_mean": 3.0, "kl": 0.03}, {"iw_max": 2.0}, rows=4,
                       skipped_rows=3)]
    means, maxima = update_metrics(steps)
    assert means == pytest.approx({
        "train/loss": 2.0, "train/grad_norm": 3.0, "train/skipped_steps": 1.0, "train/skipped_rows_frac": 0.5,
        "train/lr": 0.05, "iw/first_step_mean": 1.0, "iw/last_step_mean": 3.0, "iw/ess": 4.0,
        "iw/mean": 2.0, "iw/clipped_mean": 0.9, "iw/clip_frac": 0.1, "iw/staleness": 0.2,
        "iw/log_ratio_abs_mean": 0.3, "train/adv_abs_mean": 0.4, "train/ppo_clip_frac": 0.05, "train/kl": 0.02,
        "train/groups_dropped_frac": 0.25, "iw/engine_weight_mean": 0.95, "iw/engine_truncated_frac": 0.02,
        "iw/engine_masked_frac": 0.0})
    assert maxima == {"iw/max": 4.0, "iw/engine_ratio_max": 1.5}
