"""Reward functions: (completion text, reference) -> float in [0, 1], and the built-ins that
`reward.functions` names (`rapid_cli.rewards.numeric_match`, ...; rewards/library.py)."""

from rapid_cli.rewards.library import (
    code_tests,
    format_match,
    math_equivalent,
    numeric_match,
    overlong_penalty,
)

__all__ = ["code_tests", "format_match", "math_equivalent", "numeric_match", "overlong_penalty"]
