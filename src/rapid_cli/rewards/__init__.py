"""Reward functions: (completion text, reference) -> float in [0, 1], and the built-ins that
`reward.functions` names (`rapid_cli.rewards.numeric_match`, ...; rewards/library.py). The sandboxed
`code_tests` is `rapid_cli.tasks.code_tests` (it runs the code tasks' verdict pipeline)."""

from rapid_cli.rewards.library import format_match, gsm8k_match, math_equivalent, numeric_match, overlong_penalty

__all__ = ["format_match", "gsm8k_match", "math_equivalent", "numeric_match", "overlong_penalty"]
