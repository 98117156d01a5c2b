"""LoRA (lora=default): only the adapters train, the engine gets exactly the merged weights, checkpoints hold the
adapter in peft's format (loadable by peft itself), `rapid export` writes the merged model, `rapid eval` takes an
adapter, and a resumed LoRA run ends with the same weights as an uninterrupted one."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import RAPID, REPO, TINY, compose
from rapid_cli.errors import RapidError
from rapid_cli.lora import merged_state
from rapid_cli.policy import load_policy
from rapid_cli.samplers.vllm import vllm_available
from rapid_cli.trainer import train
from test_checkpoint import comparable, overrides, records

LORA = ["lora=default", "lora.r=4"]
QLORA = ["lora=qlora", "lora.r=4"]
# a reward the random tiny model earns now and then (a 9 anywhere in its reply), so groups differ and updates move
NINE = "reward.functions=[{_target_: rapid_cli.rewards.format_match, pattern: '.*9.*'}]"


def learning(tmp, rounds: int) -> list[str]:
    return [o for o in overrides(tmp, rounds=rounds) if not o.startswith("reward.functions")] + [NINE]
IDS = torch.tensor([[1, 5, 9, 30, 7, 2, 11, 4]])


def logits(model, ids=IDS):
    with torch.no_grad():
        return model(input_ids=ids).logits


def trained(tmp_path_factory, lora: list[str], rounds: int) -> Path:
    """The last checkpoint of a LoRA run of the tiny model on problems it sometimes gets right, so the update moves
    the adapters."""
    tmp = tmp_path_factory.mktemp(lora[0].replace("=", "-"))
    result = train(compose(learning(tmp, rounds) + lora), tmp / "run")
    assert any(r["train/grad_norm"] > 0 for r in records(tmp / "run") if r["round"] > 0), result
    return tmp / "run" / "checkpoints" / f"round-{rounds:06d}"


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    return trained(tmp_path_factory, LORA, 3)


def test_only_the_adapters_train_and_the_checkpoint_holds_them_in_peft_format(lora_run):
    files = sorted(p.name for p in (lora_run / "adapter").iterdir())
    assert "adapter_config.json" in files and "adapter_model.safetensors" in files and not (lora_run / "model").exists()
    config = json.loads((lora_run / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "tiny" and config["r"] == 4 and config["peft_type"] == "LORA"
    saved = load_file(lora_run / "adapter" / "adapter_model.safetensors")
    assert saved and all(k.startswith("base_model.model.") and ".lora_" in k for k in saved)
    assert any(".lora_B." in k and v.abs().max() > 0 for k, v in saved.items())  # B starts at 0: it trained
    # every linear layer of the decoder, not the LM head (peft's all-linear)
    assert {k.split(".")[-3] for k in saved} == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                 "down_proj"}
    state = torch.load(lora_run / "trainer_state.pt", weights_only=True)
    assert len(state["optimizer"]["state"]) == len(saved)  # AdamW holds the adapters only
    cfg = compose(TINY)
    base, _, _ = load_policy(cfg.model, torch.device("cpu"))
    trained, _, _ = load_policy(compose(TINY + [f"model.path={lora_run / 'adapter'}"]).model, torch.device("cpu"))
    frozen = {k.replace(".base_layer.", "."): v for k, v in trained.state_dict().items() if ".lora_" not in k}
    assert all(torch.equal(frozen[k], v) for k, v in base.state_dict().items())  # the base did not move
    assert not torch.allclose(logits(trained), logits(base))


def test_merged_weights_are_the_adapted_model_and_peft_loads_the_adapter(lora_run):
    from peft import PeftModel

    cfg = compose(TINY + [f"model.path={lora_run / 'adapter'}"])
    trained, _, _ = load_policy(cfg.model, torch.device("cpu"))
    plain, _, _ = load_policy(compose(TINY).model, torch.device("cpu"))
    plain.load_state_dict(dict(merged_state(trained)))
    assert torch.allclose(logits(plain), logits(trained), atol=1e-5)
    base, _, _ = load_policy(compose(TINY).model, torch.device("cpu"))
    via_peft = PeftModel.from_pretrained(base, str(lora_run / "adapter"))
    assert torch.allclose(logits(via_peft), logits(trained), atol=1e-6)


def test_rapid_export_writes_the_merged_model_and_rapid_eval_takes_the_adapter(lora_run, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "merged"
    proc = subprocess.run([RAPID, "export", str(lora_run.parent.parent), str(out)], capture_output=True,
                          text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "merged the adapter" in proc.stdout and not (out / "adapter_config.json").exists()
    exported = AutoModelForCausalLM.from_pretrained(out)
    trained, _, _ = load_policy(compose(TINY + [f"model.path={lora_run / 'adapter'}"]).model, torch.device("cpu"))
    assert torch.allclose(logits(exported), logits(trained), atol=1e-5)
    again = subprocess.run([RAPID, "export", str(lora_run), str(out)], capture_output=True, text=True, timeout=600,
                           cwd=REPO)
    assert again.returncode != 0 and "is not empty" in again.stdout + again.stderr
    proc = subprocess.run([RAPID, "eval", *TINY, f"model.path={lora_run / 'adapter'}", "eval.limit=2", "eval.n=1",
                           f"hydra.run.dir={tmp_path / 'eval'}"], capture_output=True, text=True, timeout=600,
                          cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads((tmp_path / "eval" / "eval.json").read_text())["problems"] == 2


@pytest.mark.parametrize("extra", [LORA, LORA + ["algo=grpo"], ["algo=grpo"], LORA + ["model.dtype=bfloat16"],
                                   QLORA + ["algo=grpo"]],
                         ids=["lora", "lora-grpo", "grpo", "lora-bf16-base", "qlora-grpo"])
def test_a_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(tmp_path, extra):
    """grpo: its KL term's anchor is the run's initial policy, also after a resume (it was the checkpoint's)."""
    whole = train(compose(learning(tmp_path, 2) + extra), tmp_path / "whole")
    train(compose(learning(tmp_path, 1) + extra), tmp_path / "cut")
    resumed = train(compose(learning(tmp_path, 2) + extra + ["train.resume=auto"]), tmp_path / "cut")
    assert any(r["train/grad_norm"] > 0 for r in records(tmp_path / "whole") if r["round"] > 0)
    no_eval = lambda rows: [{k: v for k, v in r.items() if not k.startswith("eval/")} for r in comparable(rows)]  # noqa: E731
    assert no_eval(records(tmp_path / "whole")) == no_eval(records(tmp_path / "cut"))  # the cut run evaluated at 1
    assert whole["reward/last_round"] == resumed["reward/last_round"]
    sub = "adapter/adapter_model.safetensors" if extra[0].startswith("lora") else "model/model.safetensors"
    a = load_file(tmp_path / "whole" / "checkpoints" / "round-000002" / sub)
    b = load_file(tmp_path / "cut" / "checkpoints" / "round-000002" / sub)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("extra", [LORA, []], ids=["lora", "adapter-alone"])
def test_a_run_that_starts_from_an_adapter_resumes_and_names_the_real_base(lora_run, tmp_path, extra):
    """model.path=<an adapter directory> trains that adapter further (with or without lora=...). Its checkpoints
    name the adapter's own base model, not the starting adapter, so the run resumes (exactly) and peft loads
    them; it had recorded the adapter directory as the base, and a resume stopped on its missing config.json."""
    start = [f"model.path={lora_run / 'adapter'}", *extra]
    whole = train(compose(learning(tmp_path, 2) + start), tmp_path / "whole")
    train(compose(learning(tmp_path, 1) + start), tmp_path / "cut")
    resumed = train(compose(learning(tmp_path, 2) + start + ["train.resume=auto"]), tmp_path / "cut")
    assert whole["reward/last_round"] == resumed["reward/last_round"]
    base = json.loads((lora_run / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"]
    for run in ("whole", "cut"):
        saved = tmp_path / run / "checkpoints" / "round-000002" / "adapter"
        assert json.loads((saved / "adapter_config.json").read_text())["base_model_name_or_path"] == base
    a, b = (load_file(tmp_path / r / "checkpoints" / "round-000002" / "adapter" / "adapter_model.safetensors")
            for r in ("whole", "cut"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    start_weights = load_file(lora_run / "adapter" / "adapter_model.safetensors")
    assert any(not torch.equal(a[k], start_weights[k]) for k in a)  # it trained on from the adapter


@pytest.mark.parametrize("bad,expect", [
    ("lora.dropout=0.1", "lora.dropout=0.1: rapid trains without dropout"),
    ("lora.r=0", "the rank must be at least 1"),
    ("model.dtype=float16", "model.dtype=float16 with LoRA: gradients through float16 activations"),
    ("train.parallel=fsdp", "lora=default with train.parallel=fsdp is not supported yet; use train.parallel=ddp"),
    ("lora.target_modules=[nonexistent]", "lora.target_modules=['nonexistent'] names no layer of this model; its "
                                          "linear layers: down_proj, gate_proj, k_proj, lm_head, o_proj, q_proj, "
                                          "up_proj, v_proj"),
])
def test_a_bad_lora_setting_is_one_line(tmp_path, bad, expect):
    with pytest.raises(RapidError) as err:
        train(compose(TINY + LORA + [bad, "train.rounds=1"]), tmp_path / "run")
    assert expect in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_an_adapted_lm_head_needs_the_unpacked_forward(tmp_path):
    """algo.packing computes log-probs with the LM head's weight directly (policy._logprob_head), which would
    bypass an adapter on the head: its adapters would get no gradient and the trainer's pi would not be the
    sampler's. Refused with one line; with algo.packing=false the head's adapters train."""
    head = ["lora.target_modules=[q_proj,lm_head]", "train.rounds=1"]
    with pytest.raises(RapidError) as err:
        train(compose(learning(tmp_path, 1) + LORA + head), tmp_path / "packed")
    assert "\n" not in str(err.value)
    assert str(err.value).startswith("lora.target_modules adapts the LM head (lm_head), which algo.packing")
    train(compose(learning(tmp_path, 1) + LORA + head + ["algo.packing=false", "train.save_every=1"]),
          tmp_path / "plain")
    saved = load_file(tmp_path / "plain" / "checkpoints" / "round-000001" / "adapter" / "adapter_model.safetensors")
    head_b = [k for k in saved if "lm_head" in k and "lora_B" in k]
    assert head_b and any(saved[k].abs().sum() > 0 for k in head_b)  # B starts at 0: the head's adapter trained


def test_a_bf16_base_reaches_the_engine_merged_in_float32():
    """The weights the sampler's sync takes (Learner.full_weights): with a bf16 base each adapted weight is
    W + scale * B @ A in float32, for the engine to round once to its own dtype; a float32 engine then holds
    the sum exactly. Rounded to the base's bf16 first, most of a young adapter's small delta was lost.
    A saved or exported model keeps W's dtype."""
    from rapid_cli.distributed import stream_full_weights
    cfg = compose(TINY + LORA + ["model.dtype=bfloat16"])
    model, _, _ = load_policy(cfg.model, torch.device("cpu"), lora_cfg=cfg.lora)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 1e-3)  # a delta far below the bf16 spacing of the base weights
    synced = dict(stream_full_weights(model))
    saved = dict(merged_state(model))
    layer = next(m for n, m in model.named_modules() if n.endswith("layers.0.self_attn.q_proj"))
    exact = layer.base_layer.weight.float() + layer.get_delta_weight("default").float()
    name = "model.layers.0.self_attn.q_proj.weight"
    assert synced[name].dtype == torch.float32 and torch.equal(synced[name], exact)
    assert saved[name].dtype == torch.bfloat16 and torch.equal(saved[name], exact.to(torch.bfloat16))
    assert not torch.equal(saved[name].float(), exact)  # the premise: bf16 cannot hold the merged sum
    assert synced["model.embed_tokens.weight"].dtype == torch.bfloat16  # weights without adapters as they are


def test_a_bf16_base_trains_float32_adapters(tmp_path):
    """model.dtype=bfloat16 with LoRA: the frozen base is held in bf16 (half the memory; it takes no updates),
    the adapters, the only weights AdamW moves, in float32 (peft gives them the base's dtype)."""
    result = train(compose(learning(tmp_path, 2) + LORA + ["model.dtype=bfloat16", "train.save_every=2"]),
                   tmp_path / "run")
    assert any(r["train/grad_norm"] > 0 for r in records(tmp_path / "run") if r["round"] > 0), result
    adapter = tmp_path / "run" / "checkpoints" / "round-000002" / "adapter"
    saved = load_file(adapter / "adapter_model.safetensors")
    assert {v.dtype for v in saved.values()} == {torch.float32}
    # bf16 would round most of these steps away: the trained B holds values a bf16 weight cannot
    assert any(".lora_B." in k and not torch.equal(v, v.bfloat16().float()) for k, v in saved.items())
    state = torch.load(adapter.parent / "trainer_state.pt", weights_only=True)
    moments = [s["exp_avg"] for s in state["optimizer"]["state"].values()]
    assert len(moments) == len(saved) and {m.dtype for m in moments} == {torch.float32}
    model, _, _ = load_policy(compose(TINY + ["model.dtype=bfloat16", f"model.path={adapter}"]).model,
                              torch.device("cpu"))
    params = dict(model.named_parameters())
    assert {p.dtype for k, p in params.items() if ".lora_" not in k} == {torch.bfloat16}
    loaded = {k.replace(".default", ""): p for k, p in params.items() if ".lora_" in k}
    assert len(loaded) == len(saved)
    assert all(torch.equal(loaded[k.removeprefix("base_model.model.")], v) for k, v in saved.items())


def test_the_adapters_learn_at_lr_scale_times_optimizer_lr(tmp_path):
    """A preset's optimizer.lr is full fine-tuning's; LoRA's adapters want about 10x it (lora.lr_scale), so
    `experiment=... lora=default` learns without a hand-set rate."""
    assert compose(LORA).lora.lr_scale == 10
    lr = {}
    for name, extra in (("full", []), ("lora", LORA + ["lora.lr_scale=3"])):
        train(compose(TINY + extra + ["train.rounds=1", "optimizer.lr=1e-4"]), tmp_path / name)
        lr[name] = [r["train/lr"] for r in records(tmp_path / name) if "train/lr" in r]
    assert lr["full"] and [3 * x for x in lr["full"]] == pytest.approx(lr["lora"], rel=1e-12)


def test_full_fine_tuning_of_bf16_weights_is_still_refused(tmp_path):
    with pytest.raises(RapidError, match="small updates round away"):
        train(compose(TINY + ["model.dtype=bfloat16", "train.rounds=1"]), tmp_path / "run")


def engine_is_the_trainer(sampler, model, tok) -> None:
    """The engine's greedy tokens and log-probs are those of `model` in the trainer (its HF sampler's)."""
    from rapid_cli.samplers.hf import HFSampler
    from rapid_cli.types import SamplingParams

    prompts = [tok.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True,
                                       tokenize=True)["input_ids"] for t in ("What is 1 + 2?", "Hi there")]
    params = SamplingParams(n=1, temperature=0, max_tokens=12)
    v, h = sampler.generate(prompts, params), HFSampler(model, tok).generate(prompts, params)
    assert v.completion_ids == h.completion_ids
    for a, b in zip(v.logprobs, h.logprobs, strict=True):
        assert torch.allclose(torch.tensor(a), torch.tensor(b), atol=1e-4)


@pytest.mark.vllm
@pytest.mark.skipif(not vllm_available(), reason="vLLM not installed")
def test_the_vllm_engine_gets_exactly_the_merged_lora_weights(lora_run):
    """After a sync the engine's greedy tokens and log-probs are those of the LoRA model in the trainer."""
    from rapid_cli.plan import open_sampler

    cfg = compose(TINY + LORA + ["sampler=vllm", "sampler.kv_cache_gb=0.25", "sampler.max_model_len=256",
                                 f"model.path={lora_run / 'adapter'}"])
    model, tok, path = load_policy(cfg.model, torch.device("cpu"))
    assert path != str(lora_run / "adapter")  # the engine starts from the base's full weights
    sampler = open_sampler(cfg, model, tok, path)
    try:
        engine_is_the_trainer(sampler, model, tok)
    finally:
        sampler.close()


@pytest.mark.vllm
@pytest.mark.skipif(not vllm_available(), reason="vLLM not installed")
def test_the_vllm_engine_serving_the_adapter_follows_every_sync(lora_run):
    """lora.sync=adapter: the engine runs the base weights and the trainer's adapter unmerged; after the adapter
    changes and a sync, its greedy tokens and log-probs are the trainer's again."""
    from rapid_cli.plan import open_sampler

    cfg = compose(TINY + LORA + ["lora.sync=adapter", "sampler=vllm", "sampler.kv_cache_gb=0.25",
                                 "sampler.max_model_len=256", f"model.path={lora_run / 'adapter'}"])
    model, tok, path = load_policy(cfg.model, torch.device("cpu"))
    sampler = open_sampler(cfg, model, tok, path)
    try:
        for change in range(2):
            if change:
                with torch.no_grad():
                    for name, p in model.named_parameters():
                        if ".lora_B." in name:
                            p.add_(torch.randn_like(p) * 0.05)
                sampler.sync_weights(iter(()))  # what it is handed is not used: it serves the model's adapter
            engine_is_the_trainer(sampler, model, tok)
        assert len(list(Path(sampler._lora_dir).iterdir())) == 1  # the previous round's adapter files are gone
    finally:
        sampler.close()


def test_resuming_with_another_lora_shape_is_refused_but_another_sync_is_not(tmp_path):
    from rapid_cli import checkpoint

    train(compose(TINY + LORA + ["train.rounds=1"]), tmp_path / "run")
    ckpt = tmp_path / "run" / "checkpoints" / "round-000001"
    assert checkpoint.config_conflicts(ckpt, compose(TINY + LORA + ["lora.sync=adapter"])) == []
    assert checkpoint.config_conflicts(ckpt, compose(TINY + LORA + ["lora.lr_scale=2"])) == []  # as optimizer.lr
    assert checkpoint.config_conflicts(ckpt, compose(TINY + LORA + ["lora.r=8"])) == ["lora.r: 4 -> 8"]
    assert checkpoint.config_conflicts(ckpt, compose(TINY)) == ["lora.enabled: True -> False"]
    # a LoRA checkpoint from before QLoRA existed has no lora.quantize: an unquantized base, as lora=default now
    saved = ckpt / "config.yaml"
    saved.write_text("\n".join(ln for ln in saved.read_text().splitlines() if not ln.startswith("  quantize:")))
    assert "quantize" not in saved.read_text()
    assert checkpoint.config_conflicts(ckpt, compose(TINY + LORA)) == []
    assert checkpoint.config_conflicts(ckpt, compose(TINY + QLORA)) == ["lora.quantize: 'none' -> 'nf4'"]


@pytest.fixture(scope="module")
def qlora_run(tmp_path_factory):
    """lora=qlora: the base's linear layers in 4-bit NF4."""
    return trained(tmp_path_factory, QLORA, 2)


def four_bit(model) -> list[str]:
    from bitsandbytes.nn import Linear4bit

    return [name for name, m in model.named_modules() if isinstance(m, Linear4bit)]


def test_qlora_trains_adapters_on_a_4bit_base_and_its_adapter_goes_back_onto_that_base(qlora_run, tmp_path):
    """lora=qlora: every linear layer of the decoder is a bitsandbytes 4-bit one, only the adapters train, the
    checkpoint records the quantization, and the adapter loads (eval, export) onto the same 4-bit base: the policy
    the run trained, not the adapter on the unquantized weights."""
    from rapid_cli.export import export

    adapter = qlora_run / "adapter"
    assert json.loads((adapter / "base_quantization.json").read_text()) == {"quantize": "nf4"}
    saved = load_file(adapter / "adapter_model.safetensors")
    assert any(".lora_B." in k and v.abs().max() > 0 for k, v in saved.items())  # B starts at 0: it trained
    state = torch.load(qlora_run / "trainer_state.pt", weights_only=True)
    assert len(state["optimizer"]["state"]) == len(saved)  # AdamW holds the adapters only
    trained, _, _ = load_policy(compose(TINY + [f"model.path={adapter}"]).model, torch.device("cpu"))
    assert len(four_bit(trained)) == 7 * compose(TINY).model.tiny_layers  # q k v o gate up down of each block
    assert {n for n, p in trained.named_parameters() if p.requires_grad} == {
        n for n, _ in trained.named_parameters() if ".lora_" in n}
    # the same adapter on the unquantized base is another model: what a load that forgot the 4 bits would run
    from rapid_cli.lora import add_adapters

    elsewhere = add_adapters(load_policy(compose(TINY).model, torch.device("cpu"))[0], saved=adapter)
    assert not torch.allclose(logits(elsewhere), logits(trained), atol=1e-3)
    export(qlora_run, tmp_path / "merged")
    from transformers import AutoModelForCausalLM

    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert not four_bit(exported)  # plain weights: the dequantized base plus the adapter
    assert torch.allclose(logits(exported), logits(trained), atol=1e-5)
    proc = subprocess.run([RAPID, "eval", *TINY, f"model.path={adapter}", "eval.limit=2", "eval.n=1",
                           f"hydra.run.dir={tmp_path / 'eval'}"], capture_output=True, text=True, timeout=600,
                          cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads((tmp_path / "eval" / "eval.json").read_text())["problems"] == 2


def test_the_merged_weights_of_a_4bit_base_are_its_dequantized_weights_plus_the_adapter(qlora_run):
    """merged_state of a QLoRA model: every weight under the base model's names (no absmax / quant_map / quant_state
    entries), each 4-bit one dequantized, the adapted ones plus scale * B @ A; a plain model loading them computes
    what the QLoRA model computes. merge=False: the dequantized base alone (an engine serving the adapter)."""
    import bitsandbytes as bnb

    trained, _, _ = load_policy(compose(TINY + [f"model.path={qlora_run / 'adapter'}"]).model, torch.device("cpu"))
    plain, _, _ = load_policy(compose(TINY).model, torch.device("cpu"))
    merged, base = dict(merged_state(trained)), dict(merged_state(trained, merge=False))
    assert merged.keys() == base.keys() == plain.state_dict().keys()
    layer = next(m for n, m in trained.named_modules() if n.endswith("layers.0.self_attn.q_proj"))
    w = bnb.functional.dequantize_4bit(layer.base_layer.weight.data, layer.base_layer.weight.quant_state)
    name = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(base[name], w) and torch.equal(merged[name], w + layer.get_delta_weight("default"))
    assert not torch.equal(w, plain.state_dict()[name])  # the premise: 4 bits are not the original weights
    plain.load_state_dict(merged)
    assert torch.allclose(logits(plain), logits(trained), atol=1e-5)  # W x + B A x against (W + B A) x


@pytest.mark.parametrize("bad,expect", [
    (["lora.quantize=nf4"], "lora.quantize=nf4 holds the frozen base of LoRA training in 4 bits and needs "
                            "lora=default"),
    (QLORA + ["train.parallel=fsdp"], "lora=default with train.parallel=fsdp is not supported yet"),
])
def test_a_bad_qlora_setting_is_one_line(tmp_path, bad, expect):
    with pytest.raises(RapidError) as err:
        train(compose(TINY + bad + ["train.rounds=1"]), tmp_path / "run")
    assert expect in str(err.value) and "\n" not in str(err.value)


def test_an_adapter_is_not_put_on_a_base_quantized_otherwise(lora_run, qlora_run, tmp_path):
    """A run that starts from an adapter trains it on the base it was trained on: lora=qlora on an adapter of an
    unquantized base, or lora=default (quantize none) on a QLoRA adapter, is one line, not a silent other model."""
    for adapter, lora, trained_on in ((lora_run, QLORA, "none"), (qlora_run, LORA, "nf4")):
        with pytest.raises(RapidError) as err:
            train(compose(TINY + lora + [f"model.path={adapter / 'adapter'}", "train.rounds=1"]), tmp_path / "run")
        assert f"was trained on a base quantized as {trained_on}" in str(err.value), str(err.value)
        assert f"set lora.quantize={trained_on}" in str(err.value) and "\n" not in str(err.value)


def test_qlora_without_bitsandbytes_is_one_line(tmp_path, monkeypatch):
    """The package missing (a pip install without make install's extras): stand-in for its absence, since it is
    installed here."""
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else
                        find_spec(name, *a))
    with pytest.raises(RapidError) as err:
        train(compose(TINY + QLORA + ["train.rounds=1"]), tmp_path / "run")
    assert str(err.value).startswith("lora.quantize=nf4 needs the bitsandbytes package: pip install")
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


@pytest.mark.vllm
@pytest.mark.skipif(not vllm_available(), reason="vLLM not installed")
@pytest.mark.parametrize("sync", ["merged", "adapter"])
def test_the_vllm_engine_samples_from_the_4bit_base_the_trainer_computes_with(qlora_run, sync):
    """QLoRA and vLLM: the engine starts from the base's weights on disk, not the trainer's 4-bit ones; after the
    first sync (merged: the dequantized base plus the adapter; adapter: the dequantized base, then the adapter
    served) its greedy tokens and log-probs are the trainer's."""
    from rapid_cli.plan import open_sampler

    cfg = compose(TINY + QLORA + [f"lora.sync={sync}", "sampler=vllm", "sampler.kv_cache_gb=0.25",
                                  "sampler.max_model_len=256", f"model.path={qlora_run / 'adapter'}"])
    model, tok, path = load_policy(cfg.model, torch.device("cpu"), lora_cfg=cfg.lora)
    sampler = open_sampler(cfg, model, tok, path)
    try:
        engine_is_the_trainer(sampler, model, tok)
    finally:
        sampler.close()


def test_a_4bit_base_keeps_its_trainable_layout_on_a_cpu_with_avx512_bf16(qlora_run, monkeypatch):
    """On a CPU with AVX512-BF16, bitsandbytes repacks a 4-bit weight for inference the first time it runs in eval mode
    without grad (pi_old, sampling, eval: every round), and then computes it with a kernel without a backward, so the
    adapters' gradients would lose every path through the frozen layers. rapid keeps the trainable layout. This
    machine's CPU may lack the flag: bitsandbytes is told it has it."""
    import bitsandbytes.nn.modules as bnb_modules

    monkeypatch.setattr(bnb_modules, "has_avx512bf16", lambda: True)
    model, _, _ = load_policy(compose(TINY + [f"model.path={qlora_run / 'adapter'}"]).model, torch.device("cpu"))
    layers = [m for m in model.modules() if isinstance(m, bnb_modules.Linear4bit)]
    assert layers and not any(m.support_avx512bf16_for_cpu for m in layers)
    model.eval()
    logits(model)  # what pi_old, the HF sampler and eval do
    assert not any(getattr(m.weight.quant_state, "packing_format_for_cpu", False) for m in layers)
    fresh, _, _ = load_policy(compose(TINY + [f"model.path={qlora_run / 'adapter'}"]).model, torch.device("cpu"))
    grads = []
    for m in (model, fresh):  # the one that ran in eval mode trains as one that never did
        m.train()
        m(input_ids=IDS).logits.float().logsumexp(-1).sum().backward()
        grads.append({n: p.grad for n, p in m.named_parameters() if p.requires_grad})
    assert all(g is not None and torch.equal(g, grads[1][n]) for n, g in grads[0].items())
    assert any(g.abs().sum() > 0 for g in grads[0].values())


def test_a_4bit_model_counts_its_weights_unpacked(qlora_run):
    """The engine holds the 4-bit base dequantized: its memory is sized by the unpacked count, as the console's."""
    from rapid_cli.lora import parameter_count, trainable_summary

    plain = load_policy(compose(TINY).model, torch.device("cpu"))[0]
    quantized = load_policy(compose(TINY).model, torch.device("cpu"), quantize="nf4")[0]
    assert parameter_count(quantized) == parameter_count(plain) == sum(p.numel() for p in plain.parameters())
    assert sum(p.numel() for p in quantized.parameters()) < parameter_count(plain)  # the premise: packed two a byte
    trained = load_policy(compose(TINY + [f"model.path={qlora_run / 'adapter'}"]).model, torch.device("cpu"))[0]
    assert f" of {parameter_count(trained) / 1e6:.1f}M parameters" in trainable_summary(trained)
