#!/usr/bin/env bash
# What an offline CUDA machine with only torch, transformers and peft installed (no vLLM, no network, no
# `pip install` of rapid) can check of rapid in a few minutes, from a copy of this repository plus the
# few small wheels it lacks (scripts/gpu_smoke_wheels.sh fetches them on a machine with network).
#
#   scripts/gpu_smoke_wheels.sh smoke-wheels            # on a machine with network: ~20 MB of wheels
#   scripts/gpu_smoke.sh --wheels smoke-wheels           # on the GPU machine, in the repository's root
#   scripts/gpu_smoke.sh --device cpu                    # the same checks on a CPU (CI, laptops)
#
# Options: --device cuda|cpu (default cuda), --wheels DIR (pip install --no-index --no-deps DIR/*.whl into
# a scratch folder put on PYTHONPATH; the Python environment itself is not changed), --keep (keep the scratch
# folder with each check's log; kept anyway when a check fails). PYTHON=... picks the interpreter (python3).
#
# rapid runs from the source tree (PYTHONPATH=src, `python -m rapid_cli`), with its cache (the tiny model)
# in the scratch folder. One line per check, PASS, FAIL or SKIP (with the reason); the exit status is 1 when
# any check fails. The checks:
#   cli               python -m rapid_cli runs; the modules a tiny run imports are all there; the device is usable
#   tiny-train        rapid train debug=smoke (2-layer random model, HF sampler, fp32): 2 rounds, finite losses
#   hf-sampler        the HF sampler generates on the device and its recorded log-probs equal the trainer's
#                     recomputation (fp32, max |difference| < 1e-4)
#   bf16-autocast     rapid train debug=smoke train.mixed_precision=bf16: runs with bf16 compute, finite losses
#                     (SKIP where the device has no fast bf16: rapid refuses bf16 there)
#   packed-attention  algo.packing=true's paths (prompt once; the dense block mask and the segmented attention,
#                     algo.packed_attention) each against the padded path on the device: fp32 log-probs within 1e-4 and raw gradients within 1e-4 relative; bf16 autocast log-probs
#                     within 0.05 (max) and 0.005 (mean) of each other, each within 0.05 (max) of fp32 (a mask that
#                     lets a group's completions see each other moves them by 0.58 max, 0.07 mean)
#   fsdp              torchrun --nproc-per-node 1 ... train.parallel=fsdp: one FSDP2 round (NCCL on CUDA, gloo on CPU)
#   memory-metrics    metrics.jsonl of tiny-train and fsdp: perf/gpu_mem_peak_gb_max in every round, > 0 and below
#                     the card's memory (CUDA; on a CPU it must be absent), perf/host_rss_peak_gb_max > 0
# The vLLM GPU path is not checked here: `make test-gpu` on a full install covers it.

set -u
cd "$(dirname "$0")/.." || exit 2
REPO=$PWD
DEVICE=cuda
WHEELS=""
KEEP=0
PY=${PYTHON:-python3}
while [ $# -gt 0 ]; do
  case $1 in
    --device) DEVICE=${2:-}; shift 2 ;;
    --device=*) DEVICE=${1#*=}; shift ;;
    --wheels) WHEELS=${2:-}; shift 2 ;;
    --wheels=*) WHEELS=${1#*=}; shift ;;
    --keep) KEEP=1; shift ;;
    -h|--help) sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "usage: $0 [--device cuda|cpu] [--wheels DIR] [--keep]" >&2; exit 2 ;;
  esac
done
case $DEVICE in cuda|cpu) ;; *) echo "--device must be cuda or cpu, not '$DEVICE'" >&2; exit 2 ;; esac

WORK=$(mktemp -d "${TMPDIR:-/tmp}/rapid-smoke.XXXXXX")
export PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}"
if [ -n "$WHEELS" ]; then
  if ! ls "$WHEELS"/*.whl >/dev/null 2>&1; then echo "--wheels $WHEELS: no .whl files there" >&2; exit 2; fi
  "$PY" -m pip install -q --no-index --no-deps --no-compile --disable-pip-version-check --target "$WORK/site" \
    "$WHEELS"/*.whl || { echo "pip could not install the wheels of $WHEELS" >&2; exit 2; }
  export PYTHONPATH="$PYTHONPATH:$WORK/site"
fi
export RAPID_CACHE="$WORK/cache" WANDB_MODE=disabled HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONUNBUFFERED=1 DEVICE
TRAIN=("$PY" -m rapid_cli train debug=smoke "device=$DEVICE" logger.live=false)

FAILED=0
START=$SECONDS
echo "rapid GPU smoke checks: device $DEVICE, $("$PY" --version 2>&1), scratch $WORK"

# run_check NAME FUNCTION: the function's output goes to $WORK/NAME.log; its last 'detail: ...' line is the
# reason shown; it returns 0 (PASS), 77 (SKIP) or anything else (FAIL, with the log's end shown).
run_check() {
  local name=$1 t0=$SECONDS rc detail
  "$2" >"$WORK/$name.log" 2>&1
  rc=$?
  detail=$(grep '^detail: ' "$WORK/$name.log" | tail -n 1 | cut -c9-)
  case $rc in
    0) echo "PASS $name: $detail ($((SECONDS - t0)) s)" ;;
    77) echo "SKIP $name: $detail" ;;
    *) FAILED=$((FAILED + 1))
       echo "FAIL $name: ${detail:-exit status $rc} ($((SECONDS - t0)) s; log $WORK/$name.log)"
       tail -n 12 "$WORK/$name.log" | sed 's/^/    | /' ;;
  esac
}

# The rounds of a run's metrics.jsonl, checked: every round logged, losses finite. Prints a detail line.
check_rounds() {  # RUN_DIR EXPECTED_ROUNDS
  "$PY" - "$1" "$2" <<'PY'
import json, math, sys
from pathlib import Path
run, want = Path(sys.argv[1]), int(sys.argv[2])
rows = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r.get("round", 0) > 0]
rounds = [r["round"] for r in rows]
assert rounds == list(range(1, want + 1)), f"rounds logged {rounds}, expected 1..{want}"
for r in rows:
    for key in ("train/loss", "train/grad_norm"):
        assert math.isfinite(r[key]), f"round {r['round']}: {key} {r[key]}"
    assert r["train/skipped_steps"] == 0, f"round {r['round']}: {r['train/skipped_steps']} steps skipped (NaN/inf)"
short = lambda key: ", ".join(f"{r[key]:.3g}" for r in rows)  # noqa: E731
print(f"detail: {want} round(s), train/loss {short('train/loss')}, grad norm {short('train/grad_norm')}, no step skipped")
PY
}

check_cli() {
  "$PY" - <<'PY' || return 1
import importlib, os, sys
# what `rapid train debug=smoke` imports beyond torch and transformers (scripts/gpu_smoke_wheels.sh)
need = {"hydra": "hydra-core", "omegaconf": "omegaconf", "antlr4": "antlr4-python3-runtime", "rich": "rich",
        "yaml": "pyyaml", "numpy": "numpy", "matplotlib": "matplotlib", "PIL": "pillow", "dateutil": "python-dateutil"}
missing = []
for module, dist in need.items():
    try:
        importlib.import_module(module)
    except ModuleNotFoundError:
        missing.append(dist)
    except Exception as e:  # a broken install counts as missing too
        missing.append(f"{dist} ({type(e).__name__}: {e})")
if missing:
    print(f"detail: missing {', '.join(missing)}: fetch them with scripts/gpu_smoke_wheels.sh and pass --wheels DIR")
    sys.exit(1)
import torch, transformers
where = "cpu"
if os.environ["DEVICE"] == "cuda":
    if not torch.cuda.is_available():
        print(f"detail: torch {torch.__version__} sees no usable CUDA device (torch.cuda.is_available() is False)")
        sys.exit(1)
    torch.ones(1, device="cuda").add_(1)
    cc = torch.cuda.get_device_capability()
    where = f"{torch.cuda.get_device_name()} (compute capability {cc[0]}.{cc[1]}, CUDA {torch.version.cuda})"
print(f"detail: torch {torch.__version__}, transformers {transformers.__version__}, {where}")
PY
  "$PY" -m rapid_cli --help >/dev/null || { echo "detail: python -m rapid_cli --help failed"; return 1; }
}

check_tiny_train() {
  "${TRAIN[@]}" "hydra.run.dir=$WORK/tiny" || { echo "detail: rapid train debug=smoke exited non-zero"; return 1; }
  check_rounds "$WORK/tiny" 2
}

check_hf_sampler() {
  "$PY" - <<'PY'
import os, torch
from rapid_cli.config import compose_config
from rapid_cli.policy import completion_logprobs, load_policy, pack
from rapid_cli.plan import open_sampler
from rapid_cli.samplers.hf import HFSampler
from rapid_cli.types import SamplingParams

device = torch.device(os.environ["DEVICE"])
cfg = compose_config(["debug=smoke", f"device={device.type}"])
model, tok, path = load_policy(cfg.model, device, cfg.cache_dir)
sampler = open_sampler(cfg, model, tok, path)
assert isinstance(sampler, HFSampler), type(sampler)
texts = ["What is 1 + 2?", "What is 7 + 5? Answer with just the number.", "Hi"]
prompts = [tok.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True, tokenize=True)
           ["input_ids"] for t in texts]
out = sampler.generate(prompts, SamplingParams(n=2, temperature=1.0, max_tokens=16, seed=0))
assert len(out.completion_ids) == 6 and all(out.completion_ids), [len(c) for c in out.completion_ids]
assert next(model.parameters()).device.type == device.type
batch = pack([p for p in prompts for _ in range(2)], out.completion_ids, tok.pad_token_id, device)
with torch.no_grad():
    lp = completion_logprobs(model, batch, 1.0).float().cpu()
gap = max((lp[i, : len(c)] - torch.tensor(out.logprobs[i])).abs().max().item()
          for i, c in enumerate(out.completion_ids))
tokens = sum(map(len, out.completion_ids))
print(f"detail: {tokens} tokens sampled on {device.type}; recorded vs recomputed log-probs max |diff| {gap:.1e} "
      "(limit 1e-4)")
assert gap < 1e-4
PY
}

check_bf16() {
  local why
  why=$("$PY" - <<'PY'
import os, torch
from rapid_cli.hardware import bf16_units, fast_bf16
cuda = os.environ["DEVICE"] == "cuda"
if not fast_bf16(cuda):
    print(f"no fast bf16 on this {'GPU' if cuda else 'CPU'} ({bf16_units(cuda)}): rapid refuses "
          "train.mixed_precision=bf16 here and auto picks fp32")
PY
  )
  if [ -n "$why" ]; then echo "detail: $why"; return 77; fi
  "${TRAIN[@]}" train.mixed_precision=bf16 "hydra.run.dir=$WORK/bf16" | tee "$WORK/bf16.out" \
    || { echo "detail: rapid train debug=smoke train.mixed_precision=bf16 exited non-zero"; return 1; }
  grep -q "bf16 compute" "$WORK/bf16.out" || { echo "detail: the run did not report bf16 compute"; return 1; }
  check_rounds "$WORK/bf16" 2
}

check_packed() {
  "$PY" - <<'PY'
import os, torch
from rapid_cli.config import compose_config
from rapid_cli.policy import (completion_logprobs, grouped_logprobs, load_policy, pack, pack_groups,
                              pack_segments, segmented_logprobs)

device = torch.device(os.environ["DEVICE"])
cfg = compose_config(["debug=smoke", f"device={device.type}"])
model, _, _ = load_policy(cfg.model, device, cfg.cache_dir)
V, G = model.config.vocab_size, 4
g = torch.Generator().manual_seed(0)
prompts = [torch.randint(5, V, (n,), generator=g).tolist() for n in (7, 40, 3, 21)]
lengths = torch.randint(0, 48, (len(prompts) * G,), generator=g).tolist()
lengths[1] = 0  # an empty completion (the sampler stopped at once)
completions = [torch.randint(5, V, (n,), generator=g).tolist() for n in lengths]
padded = pack([prompts[i // G] for i in range(len(completions))], completions, 0, device)
grouped = pack_groups(prompts, completions, G, 0, device)
segmented = pack_segments(prompts, completions, G, 0, device, chunk=16)  # completions of up to 47: 3 chunks
weights = torch.linspace(-1, 1, padded.completion_mask.numel(), device=device).view_as(padded.completion_mask)


def run(forward, bf16):
    model.zero_grad(set_to_none=True)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        lp, mask = forward()
    lp = lp.float() * mask
    (lp * weights).sum().backward()
    return lp.detach(), torch.cat([p.grad.flatten() for p in model.parameters()])


pad_fn = lambda: (completion_logprobs(model, padded, 1.0), padded.completion_mask)  # noqa: E731
packed = {"dense": lambda: (grouped_logprobs(model, grouped, 1.0), grouped.completion_mask),
          "segments": lambda: (segmented_logprobs(model, segmented, 1.0), segmented.completion_mask)}
assert torch.equal(grouped.completion_mask, padded.completion_mask)
assert torch.equal(segmented.completion_mask, padded.completion_mask)
real = padded.completion_mask > 0
want, want_grad = run(pad_fn, False)
want16, _ = run(pad_fn, True)
ok, details = True, []
for name, fn in packed.items():
    got, got_grad = run(fn, False)
    fp32 = (got - want).abs().max().item()
    grad = ((got_grad - want_grad).norm() / want_grad.norm()).item()
    got16, _ = run(fn, True)
    diff16 = (got16 - want16).abs()[real]
    err_pad, err_grp = ((x - want).abs()[real].max().item() for x in (want16, got16))
    print(f"{name}: fp32 max |log-prob diff| {fp32:.1e} (limit 1e-4), gradient relative diff {grad:.1e} (limit "
          f"1e-4); bf16: packed vs padded max {diff16.max():.3f} mean {diff16.mean():.4f} (limits 0.05, 0.005), "
          f"vs fp32 padded {err_pad:.3f} packed {err_grp:.3f} (limit 0.05)")
    details.append(f"{name} fp32 {fp32:.1e}, grad {grad:.1e}, bf16 max {diff16.max():.1e} mean {diff16.mean():.1e}")
    ok &= fp32 < 1e-4 and grad < 1e-4
    ok &= bool(diff16.max() < 0.05 and diff16.mean() < 0.005 and max(err_pad, err_grp) < 0.05)
print(f"detail: {int(real.sum())} completion tokens in {len(prompts)} groups of {G}, attention "
      f"{model.config._attn_implementation}; " + "; ".join(details))
assert ok
PY
}

check_fsdp() {
  "$PY" -m torch.distributed.run --standalone --nproc-per-node 1 -m rapid_cli train debug=smoke "device=$DEVICE" \
    logger.live=false train.parallel=fsdp train.rounds=1 "hydra.run.dir=$WORK/fsdp" \
    || { echo "detail: torchrun --nproc-per-node 1 ... train.parallel=fsdp exited non-zero"; return 1; }
  check_rounds "$WORK/fsdp" 1
}

check_memory() {
  "$PY" - "$WORK/tiny" "$WORK/fsdp" <<'PY'
import json, os, sys
from pathlib import Path
cuda = os.environ["DEVICE"] == "cuda"
total = 0.0
if cuda:
    import torch
    total = torch.cuda.get_device_properties(0).total_memory / 2**30
seen = []
for run in map(Path, sys.argv[1:]):
    if not (run / "metrics.jsonl").exists():
        continue  # that run failed: its own check said so
    for r in (json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()):
        if r.get("round", 0) < 1:
            continue
        host, gpu = r.get("perf/host_rss_peak_gb_max"), r.get("perf/gpu_mem_peak_gb_max")
        assert host and host > 0, f"{run.name} round {r['round']}: perf/host_rss_peak_gb_max {host}"
        if cuda:
            assert gpu is not None and 0 < gpu < total, f"{run.name} round {r['round']}: gpu_mem_peak {gpu}, card {total:.0f}"
        else:
            assert gpu is None, f"{run.name}: perf/gpu_mem_peak_gb_max {gpu} logged on the CPU"
        seen.append((run.name, r["round"], host, gpu))
assert seen, "no run left a metrics.jsonl"
gpu = ", ".join(f"{n} round {k} {g:.3f} GB" for n, k, _, g in seen) if cuda else "absent on the CPU, as documented"
print(f"detail: perf/gpu_mem_peak_gb_max {gpu}; perf/host_rss_peak_gb_max up to {max(h for _, _, h, _ in seen):.2f} GB")
PY
}

run_check cli check_cli
if [ "$FAILED" -gt 0 ]; then
  echo "FAIL: rapid cannot run here, the other checks are not tried (scratch $WORK kept)"
  exit 1
fi
run_check tiny-train check_tiny_train
run_check hf-sampler check_hf_sampler
run_check bf16-autocast check_bf16
run_check packed-attention check_packed
run_check fsdp check_fsdp
run_check memory-metrics check_memory

if [ "$FAILED" -gt 0 ]; then
  echo "$FAILED check(s) FAILED in $((SECONDS - START)) s; logs in $WORK"
  exit 1
fi
echo "all checks passed or skipped in $((SECONDS - START)) s"
if [ "$KEEP" = 1 ]; then echo "logs in $WORK"; else rm -rf "$WORK"; fi
