#!/bin/bash
# issue 29/30 evidence on the avx512_bf16 EPYC, one invocation per arm, alone on the machine
set -u
R=/work/main/.venv/bin/rapid
OUT=/work/runs/bf16
export PYTHONPATH=/work/frozen/src
cd /work/frozen
arm() { local name=$1; shift; echo "== $name $(date -u +%H:%M:%S)"; local t=$(date +%s)
  $R train -m "$@" logger.live=false hydra.sweep.dir=$OUT/$name > $OUT/$name.log 2>&1; echo "rc $? $name $(( $(date +%s) - t )) s"; }
arm demo-fp32 experiment=cpu-demo seed=0,1,2 train.mixed_precision=none sampler.dtype=float32
arm demo-bf16 experiment=cpu-demo seed=0,1,2
arm demo-bf16-nocorr experiment=cpu-demo seed=0,1,2 algo.engine_correction=none
arm arith-bf16 experiment=paper-arith algo=rapid,grpo seed=0,1
arm arith-bf16-nocorr experiment=paper-arith algo=rapid,grpo seed=0,1 algo.engine_correction=none
arm arith-fp32 experiment=paper-arith algo=rapid,grpo seed=0,1 train.mixed_precision=none sampler.dtype=float32
echo "== done $(date -u +%H:%M:%S)"
