"""The algorithm registry: every record agrees with its loss, its preset and the config schema."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import REPO, compose
from rapid_cli.algorithms import ALGORITHMS, check, get
from rapid_cli.config import AlgoConfig
from rapid_cli.errors import RapidError


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_each_record_matches_its_loss_preset_and_schema(name):
    algorithm = ALGORITHMS[name]
    params = inspect.signature(algorithm.loss).parameters
    schema = AlgoConfig.__dataclass_fields__
    for option in algorithm.options:  # a typo in a record would pass a field the loss does not take
        assert option in params and params[option].default is not inspect.Parameter.empty, (name, option)
        assert option in schema, (name, option)
    assert ("ref_logprobs" in params) == algorithm.reference
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
