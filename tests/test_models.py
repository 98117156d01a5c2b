"""Model sources: the offline pretrained model converts and works; the tiny model is reproducible."""

import re

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


def test_a_model_file_or_a_checkpoint_directory_names_the_model_directory(tmp_path):
    """model.path=<.../model.safetensors> said the file "does not exist"; it is a file, and its directory is the
    model. A checkpoint directory (round-NNNNNN) holds its model in model/."""
    model = tmp_path / "seed=0,lr=1e-6" / "checkpoints" / "round-000002" / "model"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"")
    cfg = compose(["model=tiny"]).model
    cfg.path = str(model / "model.safetensors")
    with pytest.raises(RapidError) as err:
        resolve_model(cfg)
    assert str(err.value) == (f"model.path={model / 'model.safetensors'} is a file; give the directory that holds it: "
                              f"\"model.path='{model}'\"")  # quoted: the path holds '=' and ','
    cfg.path = str(model.parent)
    with pytest.raises(RapidError, match=f"is a checkpoint directory; its model is \"model.path='{model}'\""):
        resolve_model(cfg)
    lora = tmp_path / "lora" / "round-000002"  # a LoRA run's checkpoint: the adapter is its model
    (lora / "adapter").mkdir(parents=True)
    (lora / "adapter" / "adapter_config.json").write_text("{}")
    cfg.path = str(lora)
    with pytest.raises(RapidError, match=re.escape(f"its model is model.path={lora / 'adapter'}")):
        resolve_model(cfg)


@pytest.mark.parametrize(("inner", "marker"), [("model", "config.json"), ("adapter", "adapter_config.json")],
                         ids=["full", "lora"])
@pytest.mark.parametrize("command", ["eval", "train"])
def test_a_path_given_without_a_key_says_which_key_takes_it(tmp_path, command, inner, marker):
    """`rapid eval <checkpoint>` got Hydra's parse error and the advice to write '<path>=""'. A LoRA run's
    checkpoint holds adapter/, not model/ (the hint named the checkpoint itself)."""
    from conftest import rapid

    checkpoint = tmp_path / "run" / "checkpoints" / "round-000002"
    (checkpoint / inner).mkdir(parents=True)
    (checkpoint / inner / marker).write_text("{}")
    proc = rapid(command, str(checkpoint), "task=arith")
    out = (proc.stdout + proc.stderr).strip()
    assert proc.returncode == 2 and "\n" not in out, out
    assert out.startswith(f"error: rapid {command} takes key=value overrides, not a path ({checkpoint})"), out
    want = (f"to evaluate that model: rapid eval model.path={checkpoint / inner} task=arith" if command == "eval" else
            f"train.resume={checkpoint} continues that run")
    assert out.endswith(want), out
    if command == "eval":  # the run directory: its newest checkpoint's model
        proc = rapid(command, str(tmp_path / "run"), "task=arith")
        out = (proc.stdout + proc.stderr).strip()
        assert out.endswith(f"rapid eval model.path={checkpoint / inner} task=arith"), out


def test_a_sweep_jobs_directory_given_without_a_key_is_named_and_the_advice_keeps_the_other_overrides(tmp_path):
    """A sweep job's directory holds '=' and ',' (0_seed=0,train.rounds=2): given bare to `rapid eval` it got
    Hydra's parse error and quoting advice that failed the same way when pasted; and the advice for a path
    dropped the command's other overrides, so pasting it evaluated under another config."""
    import os
    import shlex
    import subprocess

    from conftest import RAPID, TINY, rapid

    job = tmp_path / "sweep" / "0_seed=0,train.rounds=2"
    checkpoint = job / "checkpoints" / "round-000002"
    (checkpoint / "model").mkdir(parents=True)
    (checkpoint / "model" / "config.json").write_text("{}")
    proc = rapid("eval", str(job), *TINY, "eval.limit=1")
    out = (proc.stdout + proc.stderr).strip()
    assert proc.returncode == 2 and "\n" not in out, out
    assert out.startswith(f"error: rapid eval takes key=value overrides, not a path ({job})"), out
    advice = out.split("to evaluate that model: ", 1)[1]
    words = shlex.split(advice)
    assert words[:2] == ["rapid", "eval"] and words[3:] == [*TINY, "eval.limit=1"], words
    assert words[2] == f"model.path='{checkpoint / 'model'}'", words  # Hydra reads the quoted value back whole
    # pasted into a shell, the advice gets past Hydra's parse to the model (a stand-in here: no weights)
    env = {**os.environ, "WANDB_MODE": "disabled", "PATH": f"{os.path.dirname(RAPID)}:{os.environ['PATH']}"}
    pasted = subprocess.run(["bash", "-c", advice], env=env, capture_output=True, text=True, timeout=300)
    said = (pasted.stdout + pasted.stderr).strip()
    assert pasted.returncode == 2 and "\n" not in said and "cannot parse" not in said, said
    assert str(checkpoint / "model") in said, said
