#!/bin/bash
# issue 29 evidence on the AMX-BF16 Xeon, one invocation per arm, alone on the machine
set -u
R=/work/main/.venv/bin/rapid
OUT=/work/runs/amx
cd /work/main
arm() { local name=$1; shift; echo "== $name $(date -u +%H:%M:%S)"; local t=$(date +%s)
  $R train -m "$@" logger.live=false hydra.sweep.dir=$OUT/$name > $OUT/$name.log 2>&1; echo "rc $? $name $(( $(date +%s) - t )) s"; }
arm demo-fp32 experiment=cpu-demo seed=0,1,2 train.mixed_precision=none sampler.dtype=float32
arm demo-bf16 experiment=cpu-demo seed=0,1,2
arm arith-bf16 experiment=paper-arith algo=rapid,grpo seed=0,1
arm arith-fp32 experiment=paper-arith algo=rapid,grpo seed=0,1 train.mixed_precision=none sampler.dtype=float32
echo "== done $(date -u +%H:%M:%S)"
