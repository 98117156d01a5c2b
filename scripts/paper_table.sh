#!/usr/bin/env bash
# The paper's table at 2-CPU scale (docs/results.md): every contender of experiment=paper-<task> as rapid
# sweeps, seed-major: on the first seed the headline pair (RAPID A=4 and GRPO), the base model by `rapid eval -m`,
# then PG, DAPO, RAPID A=2 and A=8, and only then the pair's further seeds, so a table cut short still has every
# contender; then `rapid report`. Run it again to continue where it stopped: a finished run is found complete by
# train.resume=auto and skipped, an interrupted one resumes from its last round's checkpoint.
#
#   scripts/paper_table.sh gsm8k
#   scripts/paper_table.sh arith                                              # where SmolLM2-135M learns
#   scripts/paper_table.sh mbpp task.data_path=/path/to/MbppPlus.jsonl.gz     # offline copy of MBPP+
#
#   SEEDS="0 1 2" scripts/paper_table.sh gsm8k-long                           # experiment=paper-gsm8k-long
#   SEEDS="0 1 2" AGAIN=eval.temperature=0.7 scripts/paper_table.sh gsm8k-easy  # and once more at T=0.7
#
# OUT (default docs/results/<task>) is where the runs go; RAPID (default .venv/bin/rapid) the rapid to run;
# SEEDS (default "0 1") the seeds of the headline pair and the base model (the other contenders: seed 0).
# AGAIN (e.g. "eval.temperature=0.7"): overrides under which every run's final checkpoint and the base model are
# evaluated once more (into <job>/again-<overrides> and $OUT/base-again-<overrides>); `rapid report` gives those
# a table of their own, so a gain at the eval protocol can be told from what the base model gets by sampling
# differently (docs/results.md, experiment=paper-gsm8k-easy).
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

evaluate_base() {  # the base model, on every seed not yet evaluated under directory $1, with overrides $2...
  local dir=$1 seed missing=()
  shift
  for seed in "${seeds[@]}"; do
    grep -rqE --include=eval.json "^  \"seed\": $seed,\$" "$dir" 2>/dev/null || missing+=("$seed")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    "$rapid" eval -m "experiment=paper-$task" "seed=$(IFS=,; echo "${missing[*]}")" "$@" "hydra.sweep.dir=$dir" \
      ${EXTRA[@]+"${EXTRA[@]}"}
  fi
}

read -r -a seeds <<< "${SEEDS:-0 1}"
train "seed${seeds[0]}" algo=rapid,grpo "seed=${seeds[0]}"
evaluate_base "$out/base"
train baselines algo=pg,dapo seed=0
train rapid-a algo=rapid algo.steps_per_generation=2,8 seed=0
for seed in "${seeds[@]:1}"; do
  train "seed$seed" algo=rapid,grpo "seed=$seed"
done
if [ -n "${AGAIN:-}" ]; then
  read -r -a again <<< "$AGAIN"
  name=again-$(tr -c 'A-Za-z0-9.\n' - <<< "$AGAIN")
  evaluate_base "$out/base-$name" "${again[@]}"
  python=${PYTHON:-$(dirname "$rapid")/python}
  for job in "$out"/*/*/; do
    job=${job%/}
    checkpoint=$(find "$job/checkpoints" -maxdepth 1 -name 'round-*' 2>/dev/null | sort | tail -n 1 || true)  # none: base/
    [ -n "$checkpoint" ] && [ ! -f "$job/$name/eval.json" ] || continue
    model=$checkpoint/model
    [ -d "$model" ] || model=$checkpoint/adapter  # a LoRA run's
    # the job's own overrides (task, prompt, sampler), as Hydra saved them
    mapfile -t own < <("$python" -c 'import sys, yaml; print("\n".join(yaml.safe_load(open(sys.argv[1]))))' \
      "$job/.hydra/overrides.yaml" | grep -v '^train\.resume=')
    "$rapid" eval "${own[@]}" "model.path='$model'" "${again[@]}" "hydra.run.dir='$job/$name'"
  done
fi
"$rapid" report "$out" --baseline algo=grpo
