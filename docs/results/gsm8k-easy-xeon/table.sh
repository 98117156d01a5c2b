# The gsm8k-easy table's runs on the AMX-BF16 Xeon (2026-12-06 20:18 UTC on), one command at a time on the otherwise
# idle machine, from a checkout of 37ea8f3 (the same training code as f946a0d, the table's commit). Each `rapid
# train` resumes its job from the newest checkpoint if it was stopped (SIGTERM after a checkpoint, each sitting's end).
OUT=${OUT:-runs/gsm8k-easy-xeon}
export WANDB_MODE=disabled
# PG seed 0: 2026-12-06 21:34-23:01 UTC (stopped after round 191), then 2026-12-06 23:46-2026-12-07 00:41 UTC,
# resumed from its round-176 checkpoint (a first resume at 23:45 was stopped by a mis-timed stop script in its first
# round; at 23:56, for about a minute, a second `rapid train` of this sweep ran beside it: the run directory's lock
# turned it away from PG and it was killed while starting DAPO)
rapid train -m experiment=paper-gsm8k-easy algo=pg,dapo seed=0 train.resume=auto logger.live=false \
    hydra.sweep.dir=$OUT/baselines    # PG then DAPO; DAPO 2026-12-07 01:14-02:15 UTC to round 112
                                      # (stopped after its checkpoint), then 03:14-04:51 UTC from it (the same
                                      # command; PG, finished, is skipped)
# the base model on this machine (00:42-01:00 UTC)
rapid eval -m experiment=paper-gsm8k-easy seed=0,1,2 hydra.sweep.dir=$OUT/base
# the table's AGAIN step for PG (01:01-01:14 UTC): its final checkpoint and the base model at T=0.7
JOB="$OUT/baselines/0_algo=pg,experiment=paper-gsm8k-easy,seed=0,train.resume=auto"
rapid eval experiment=paper-gsm8k-easy algo=pg seed=0 logger.live=False "model.path='$JOB/checkpoints/round-000256/model'" \
    eval.temperature=0.7 "hydra.run.dir='$JOB/again-eval.temperature-0.7'"
rapid eval -m experiment=paper-gsm8k-easy seed=0 eval.temperature=0.7 hydra.sweep.dir=$OUT/base-again-eval.temperature-0.7
rapid report $OUT --target eval/pass@1=0.015
# paired over the 200 problems: a checkpoint's evaluation against the base model's (mean over its seeds)
python paired.py "$JOB/evals/round-000256.jsonl.gz" $OUT/base/*/eval.json
python paired.py "$JOB/again-eval.temperature-0.7/eval.json" $OUT/base-again-eval.temperature-0.7/*/eval.json
# DAPO's AGAIN step (2026-12-07 04:51-04:58 UTC) and its paired tests
JOB="$OUT/baselines/1_algo=dapo,experiment=paper-gsm8k-easy,seed=0,train.resume=auto"
rapid eval experiment=paper-gsm8k-easy algo=dapo seed=0 logger.live=False "model.path='$JOB/checkpoints/round-000256/model'" \
    eval.temperature=0.7 "hydra.run.dir='$JOB/again-eval.temperature-0.7'"
for n in 64 128 192 256; do python paired.py "$JOB/evals/round-$(printf %06d $n).jsonl.gz" $OUT/base/*/eval.json; done
python paired.py "$JOB/again-eval.temperature-0.7/eval.json" $OUT/base-again-eval.temperature-0.7/*/eval.json
# RAPID A=2 seed 0: 2026-12-07 07:36-09:00 UTC to round 96 of 128 (stopped after its checkpoint; this command, with
# algo.steps_per_generation=2,8, started A=2), then 09:42-10:07 UTC from that checkpoint (resumed with
# algo.steps_per_generation=2 alone, so that its T=0.7 check ran before A=8 started), the T=0.7 check 10:07-10:11 UTC
rapid train -m experiment=paper-gsm8k-easy algo=rapid algo.steps_per_generation=2 seed=0 train.resume=auto \
    logger.live=false hydra.sweep.dir=$OUT/rapid-a
JOB="$OUT/rapid-a/0_algo.steps_per_generation=2,algo=rapid,experiment=paper-gsm8k-easy,seed=0,train.resume=auto"
rapid eval experiment=paper-gsm8k-easy algo=rapid algo.steps_per_generation=2 seed=0 logger.live=False \
    "model.path='$JOB/checkpoints/round-000128/model'" eval.temperature=0.7 "hydra.run.dir='$JOB/again-eval.temperature-0.7'"
for n in 32 64 96 128; do python paired.py "$JOB/evals/round-$(printf %06d $n).jsonl.gz" $OUT/base/*/eval.json; done
python paired.py "$JOB/again-eval.temperature-0.7/eval.json" $OUT/base-again-eval.temperature-0.7/*/eval.json
# RAPID A=8 seed 0: 2026-12-07 10:11-11:52 UTC (one sitting), its T=0.7 check 11:52-11:59 UTC
rapid train -m experiment=paper-gsm8k-easy algo=rapid algo.steps_per_generation=8 seed=0 train.resume=auto \
    logger.live=false hydra.sweep.dir=$OUT/rapid-a8
JOB="$OUT/rapid-a8/0_algo.steps_per_generation=8,algo=rapid,experiment=paper-gsm8k-easy,seed=0,train.resume=auto"
rapid eval experiment=paper-gsm8k-easy algo=rapid algo.steps_per_generation=8 seed=0 logger.live=False \
    "model.path='$JOB/checkpoints/round-000032/model'" eval.temperature=0.7 "hydra.run.dir='$JOB/again-eval.temperature-0.7'"
for n in 8 16 24 32; do python paired.py "$JOB/evals/round-$(printf %06d $n).jsonl.gz" $OUT/base/*/eval.json; done
python paired.py "$JOB/again-eval.temperature-0.7/eval.json" $OUT/base-again-eval.temperature-0.7/*/eval.json
rapid report $OUT --target eval/pass@1=0.015
