"""Built-in reward functions for `reward.functions`, in TRL's form: `fn(completions, **columns) -> list[float]`.

Each applies the same rule as the built-in task that uses it (one implementation of each rule):
`numeric_match` is arith's, `gsm8k_match` is gsm8k's, `math_equivalent` is math's. (`code_tests`, mbpp's
sandboxed verdict, lives beside the code tasks whose machinery it uses: `rapid_cli.tasks.code_tests`.)
`format_match` and `overlong_penalty` are the usual shaping terms of R1-style runs. Completions may be texts or TRL's
conversational form (a list of messages, the last one the reply).
"""

from __future__ import annotations

import re

from rapid_cli.rewards.answers import numeric_reward
from rapid_cli.rewards.gsm8k_answers import gsm8k_reward
from rapid_cli.rewards.math_answers import boxed_reward

THINK_ANSWER = r"<think>.*?</think>\s*<answer>.*?</answer>"


def text_of(completion) -> str:
    """A completion's text: TRL passes conversational ones as a list of messages, the reply last."""
    return completion if isinstance(completion, str) else completion[-1]["content"]


def numeric_match(completions: list, answer: list, **_) -> list[float]:
    """1.0 when the final number (last \\boxed{}, else after `####`, else the last number) equals `answer`
    (arith's rule; for GSM8K-style word problems use `gsm8k_match`).

    >>> numeric_match(["so it is 12", "<answer>7</answer>", "no idea"], answer=["12", 7, "3"])
    [1.0, 1.0, 0.0]
    """
    return [numeric_reward(text_of(c), str(a)) for c, a in zip(completions, answer, strict=True)]


def gsm8k_match(completions: list, answer: list, truncated: list | None = None, **_) -> list[float]:
    """1.0 when the final answer under gsm8k's rule (rewards/gsm8k_answers.py: the first `#### N`, else
    the last numeric `\\boxed{}`, else the last "the answer is N", else -- unless the completion was cut
    off at max_tokens -- the last number) equals `answer`.

    >>> gsm8k_match(["#### 18 dollars", "so 9 * 2 = 18", "so 9 * 2 = 18"], answer=["18", "18", 18],
    ...             truncated=[True, False, True])
    [1.0, 1.0, 0.0]
    """
    cut = truncated if truncated is not None else [False] * len(completions)
    return [gsm8k_reward(text_of(c), str(a), bool(t)) for c, a, t in zip(completions, answer, cut, strict=True)]


def math_equivalent(completions: list, answer: list, timeout_s: float = 5.0, **_) -> list[float]:
    """1.0 when the completion's last \\boxed{} is mathematically equal to `answer` (math-verify).

    >>> math_equivalent(["thus \\\\boxed{\\\\frac12}", "\\\\boxed{3}", "0.5"], answer=["0.5", "4", "0.5"])
    [1.0, 0.0, 0.0]
    """
    return [boxed_reward(text_of(c), str(a), timeout_s) for c, a in zip(completions, answer, strict=True)]


def format_match(completions: list, pattern: str = THINK_ANSWER, **_) -> list[float]:
    """1.0 when the whole completion (surrounding whitespace aside) matches the regex `pattern`; the
    default is R1's `<think>...</think><answer>...</answer>`. `.` matches newlines.

    >>> format_match(["<think>2+2</think> <answer>4</answer>", "<answer>4</answer>"])
    [1.0, 0.0]
    >>> format_match(["<answer>4</answer>", "4"], pattern=r"<answer>\\s*-?\\d+\\s*</answer>")
    [1.0, 0.0]
    """
    rx = re.compile(pattern, re.DOTALL)
    return [float(rx.fullmatch(text_of(c).strip()) is not None) for c in completions]


def overlong_penalty(completions: list, completion_ids: list, truncated: list, max_tokens: int | None = None,
                     cache_tokens: int = 0, penalty: float = 1.0, **_) -> list[float]:
    """A penalty for running long. Without `max_tokens`: -penalty for a completion cut off by the token
    limit, 0 otherwise. With `max_tokens` and `cache_tokens` (DAPO's soft overlong punishment): 0 up to
    max_tokens - cache_tokens tokens, then falling linearly to -penalty at max_tokens, and -penalty past it.

    >>> overlong_penalty(["a", "b"], completion_ids=[[1], [1, 2]], truncated=[False, True])
    [0.0, -1.0]
    >>> overlong_penalty(["a"] * 3, completion_ids=[[0] * 6, [0] * 9, [0] * 12], truncated=[False] * 3,
    ...                  max_tokens=10, cache_tokens=4)
    [0.0, -0.75, -1.0]
    """
    out = []
    for ids, cut in zip(completion_ids, truncated, strict=True):
        if max_tokens is None:
            out.append(-penalty if cut else 0.0)
            continue
        over = len(ids) - (max_tokens - cache_tokens)
        out.append(0.0 if over <= 0 else -penalty * min(1.0, over / max(1, cache_tokens)))
    return out
