"""Reward functions: (completion text, reference) -> float in [0, 1]."""
