cd /work/frozen
export WANDB_MODE=disabled PYTHONPATH=/work/frozen/src
/work/main/.venv/bin/rapid train -m experiment=paper-gsm8k-easy algo=rapid seed=0 train.resume=auto logger.live=false \
    hydra.sweep.dir=/work/runs/gsm8k-easy/seed0
date
