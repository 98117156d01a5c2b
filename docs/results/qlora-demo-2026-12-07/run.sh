#!/bin/bash
# issue 31 evidence for QLoRA: the demo with lora=default against lora=qlora (the base's linear layers in 4-bit NF4),
# seed 0, one invocation per arm, alone on a 2-core AMD EPYC with AVX2 and no bf16 units (precision=auto: fp32)
set -u
R=/work/main/.venv/bin/rapid
OUT=/work/runs/demo-qlora
export WANDB_MODE=disabled
cd /work/main
arm() { local name=$1; shift; echo "== $name $(date -u +%H:%M:%S)"; local t=$(date +%s)
  $R train -m "$@" logger.live=false hydra.sweep.dir=$OUT/$name > $OUT/$name.log 2>&1; echo "rc $? $name $(( $(date +%s) - t )) s"; }
arm lora experiment=cpu-demo lora=default seed=0
arm qlora experiment=cpu-demo lora=qlora seed=0
echo "== done $(date -u +%H:%M:%S)"
