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
#   SEEDS="0 1 2" scripts/paper_table.sh gsm8k-long                           # experiment=paper-gsm8k-long
#
# OUT (default docs/results/<task>) is where the runs go; RAPID (default .venv/bin/rapid) the rapid to run;
# SEEDS (default "0 1") the seeds of the headline pair and the base model (the other contenders: seed 0).
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

read -r -a seeds <<< "${SEEDS:-0 1}"
train "seed${seeds[0]}" algo=rapid,grpo "seed=${seeds[0]}"
missing=()  # the seeds whose base-model evaluation is not there yet
for seed in "${seeds[@]}"; do
  grep -rqE --include=eval.json "^  \"seed\": $seed,\$" "$out/base" 2>/dev/null || missing+=("$seed")
done
if [ ${#missing[@]} -gt 0 ]; then
  "$rapid" eval -m "experiment=paper-$task" "seed=$(IFS=,; echo "${missing[*]}")" "hydra.sweep.dir=$out/base" \
    ${EXTRA[@]+"${EXTRA[@]}"}
fi
for seed in "${seeds[@]:1}"; do
  train "seed$seed" algo=rapid,grpo "seed=$seed"
done
train baselines algo=pg,dapo seed=0
train rapid-a algo=rapid algo.steps_per_generation=2,8 seed=0
"$rapid" report "$out" --baseline algo=grpo
