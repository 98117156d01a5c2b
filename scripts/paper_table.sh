#!/usr/bin/env bash
# The paper's table at 2-CPU scale (docs/results.md): every contender of experiment=paper-<task> as rapid
# sweeps, seed-major (the headline pair RAPID A=4 and GRPO first), the base model by `rapid eval -m`, then
# `rapid report`. Run it again to continue where it stopped: a finished run is found complete by
# train.resume=auto and skipped, an interrupted one resumes from its last round's checkpoint.
#
#   scripts/paper_table.sh gsm8k
#   scripts/paper_table.sh arith                                              # where SmolLM2-135M learns
#   scripts/paper_table.sh mbpp task.data_path=/path/to/MbppPlus.jsonl.gz     # offline copy of MBPP+
#
# OUT (default docs/results/<task>) is where the runs go; RAPID (default .venv/bin/rapid) the rapid to run.
set -euo pipefail
task=${1:?usage: scripts/paper_table.sh gsm8k|mbpp|arith [override ...]}
shift
out=${OUT:-docs/results/$task}
rapid=${RAPID:-.venv/bin/rapid}
export WANDB_MODE=${WANDB_MODE:-disabled}

EXTRA=("$@")  # overrides every run gets

train() {
  local name=$1
  shift
  "$rapid" train -m "experiment=paper-$task" "$@" train.resume=auto logger.live=false "hydra.sweep.dir=$out/$name" \
    ${EXTRA[@]+"${EXTRA[@]}"}
}

train seed0 algo=rapid,grpo seed=0
if [ "$(find "$out/base" -name eval.json 2>/dev/null | wc -l)" -lt 2 ]; then
  "$rapid" eval -m "experiment=paper-$task" seed=0,1 "hydra.sweep.dir=$out/base" ${EXTRA[@]+"${EXTRA[@]}"}
fi
train seed1 algo=rapid,grpo seed=1
train baselines algo=pg,dapo seed=0
train rapid-a algo=rapid algo.steps_per_generation=2,8 seed=0
"$rapid" report "$out" --baseline algo=grpo
