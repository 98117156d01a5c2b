#!/bin/bash
# issue 31 evidence: the demo, full fine-tuning vs lora=default (fp32 base) vs lora=default model.dtype=bfloat16,
# seeds 0 and 1, one invocation per arm, alone on the AMX-BF16 Xeon (default precision: bf16 autocast here)
set -u
R=/work/main/.venv/bin/rapid
OUT=/work/runs/demo-lora
export WANDB_MODE=disabled
cd /work/main
arm() { local name=$1; shift; echo "== $name $(date -u +%H:%M:%S)"; local t=$(date +%s)
  $R train -m "$@" logger.live=false hydra.sweep.dir=$OUT/$name > $OUT/$name.log 2>&1; echo "rc $? $name $(( $(date +%s) - t )) s"; }
arm full experiment=cpu-demo seed=0,1
arm lora experiment=cpu-demo lora=default seed=0,1
arm lora-bf16-base experiment=cpu-demo lora=default model.dtype=bfloat16 seed=0,1
echo "== done $(date -u +%H:%M:%S)"
