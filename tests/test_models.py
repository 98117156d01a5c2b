"""Model sources: the offline pretrained model converts and works; the tiny model is reproducible."""

import pytest
import torch

from conftest import compose
from rapid_cli.errors import RapidError
from rapid_cli.models import build_tiny_model, resolve_model
from rapid_cli.policy import load_policy
from rapid_cli.samplers.hf import HFSampler
from rapid_cli.tasks import make_task
from rapid_cli.types import SamplingParams


@pytest.mark.slow
def test_offline_smollm2_answers_simple_sums_greedily():
    cfg = compose(["model=smollm2-135m", "task=arith"])
    model, tok, path = load_policy(cfg.model, torch.device("cpu"))
    assert path.endswith("SmolLM2-135M-Instruct.Q4_1")
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    task = make_task(cfg.task)
    problems = task.test[:16]
    gens = HFSampler(model, tok).generate([task.prompt_ids(p, tok) for p in problems],
                                          SamplingParams(temperature=0, max_tokens=12))
    accuracy = sum(task.rewards(gens.texts, problems)) / len(problems)
    assert accuracy >= 0.4, gens.texts  # measured ~0.7 greedy; random weights would score ~0


def test_tiny_model_is_cached_and_deterministic(tmp_path):
    cfg = compose(["model=tiny"]).model
    a = build_tiny_model(cfg, str(tmp_path / "a"))
    b = build_tiny_model(cfg, str(tmp_path / "b"))
    from safetensors.torch import load_file

    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert build_tiny_model(cfg, str(tmp_path / "a")) == a  # second call reuses the cache


def test_missing_paths_name_the_problem(tmp_path):
    cfg = compose(["model=tiny"]).model
    cfg.path = str(tmp_path / "nope")
    with pytest.raises(RapidError, match="does not exist"):
        resolve_model(cfg)
    cfg.path = str(tmp_path)
    with pytest.raises(RapidError, match="without config.json"):
        resolve_model(cfg)
    cfg.path = "pkg:no_such_pkg_xyz/model.gguf"
    with pytest.raises(RapidError, match="needs the Python package 'no_such_pkg_xyz'"):
        resolve_model(cfg)
