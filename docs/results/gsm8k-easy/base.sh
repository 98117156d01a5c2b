cd /work/frozen
export WANDB_MODE=disabled PYTHONPATH=/work/frozen/src
R=/work/main/.venv/bin/rapid
$R eval experiment=paper-gsm8k-easy eval.split=train eval.temperature=0.7 hydra.run.dir=/work/runs/gsm8k-easy/base-train-t07
$R eval -m experiment=paper-gsm8k-easy seed=0 hydra.sweep.dir=/work/runs/gsm8k-easy/base
date
