# The pilot of experiment=paper-gsm8k-easy, seed 0, one job at a time on the otherwise idle 2-core EPYC, each from a
# checkout of the commit named (the training code is the same in both; e89d31e adds the evaluations' standard
# errors and completions). Each command resumes its job from the newest checkpoint if it was stopped.
OUT=${OUT:-runs/gsm8k-easy}
export WANDB_MODE=disabled
# RAPID A=4, commit 8ac91db (2026-12-06 05:35-06:05 and 07:12-08:47 UTC, stopped once after round 18 and resumed
# from its round-16 checkpoint)
rapid train -m experiment=paper-gsm8k-easy algo=rapid seed=0 train.resume=auto logger.live=false \
    hydra.sweep.dir=$OUT/rapid-seed0
# GRPO, commit e89d31e (08:47-09:04 and 10:31-11:31 UTC so far, stopped at its round-16 and round-64 checkpoints;
# the same command continues it)
rapid train -m experiment=paper-gsm8k-easy algo=grpo seed=0 train.resume=auto logger.live=false \
    hydra.sweep.dir=$OUT/grpo-seed0
rapid report $OUT --target eval/pass@1=0.015
