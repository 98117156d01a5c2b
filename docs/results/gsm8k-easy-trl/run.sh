# TRL 1.16.0's GRPOTrainer on experiment=paper-gsm8k-easy, seed 0, steps_per_generation=4, from a checkout of commit
# 5e1143a with TRL in .bench-site (scripts/trl_grpo.py's docstring), alone on the 2-core EPYC, 2026-12-06 11:31-12:06
# UTC. Planned: 512 completions (train.samples=512), then the same with --steps-per-generation 1; stopped after its
# first generation batch and 4 optimizer steps (128 completions, 2068 s): at that rate 512 completions take ~2.3 h
# a run. Its metrics.jsonl rows are TRL's steps, timed as scripts/trl_grpo.py describes.
export WANDB_MODE=disabled
PYTHONPATH=.bench-site python scripts/trl_grpo.py --out $OUT/trl-spg4-seed0 --seed 0 --steps-per-generation 4 \
    --save-steps 8 experiment=paper-gsm8k-easy train.samples=512 eval.every_samples=512

# steps_per_generation=1, from main at 10b9b1f (same training code; TRL in .bench-site), alone, 2026-12-06
# 16:20-16:33 UTC: stopped after its first two steps (64 completions, 697 s), for the per-phase comparison only.
PYTHONPATH=.bench-site python scripts/trl_grpo.py --out $OUT/trl-spg1-seed0 --seed 0 --steps-per-generation 1 \
    --save-steps 8 experiment=paper-gsm8k-easy train.samples=512 eval.every_samples=512
