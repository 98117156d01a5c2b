#!/usr/bin/env bash
# TRL GRPOTrainer (steps_per_generation 4 and 1) beside rapid's RAPID A=4 and GRPO on experiment=paper-arith, seed 0,
# one after another on the otherwise idle machine.
set -x
cd /work/frozen
export WANDB_MODE=disabled PYTHONPATH=/work/frozen/src
OUT=/work/runs/trl-arith
for seed in ${SEEDS:-0}; do
  /work/main/.venv/bin/rapid train -m experiment=paper-arith algo=rapid,grpo seed=$seed train.resume=auto logger.live=false \
      hydra.sweep.dir=$OUT/rapid-seed$seed
  for spg in 4 1; do
    PYTHONPATH=/work/main/.bench-site:/work/frozen/src /work/main/.venv/bin/python scripts/trl_grpo.py \
        --out $OUT/trl-spg$spg-seed$seed --seed $seed --steps-per-generation $spg experiment=paper-arith
  done
done
date
