"""Competition-math answers: the last \\boxed{} of a completion, compared with `math-verify`.

math-verify parses LaTeX into sympy and decides equivalence (1/2 = \\frac{1}{2} = 0.5, set and
interval forms, ...). Its own time limits use SIGALRM, which only works in the main thread; rewards
are scored there. Elsewhere (a worker thread) the comparison runs without a limit, so callers that
score from threads should prefer processes.
"""

from __future__ import annotations

import threading

from rapid_cli.rewards.answers import last_boxed


def _normal(s: str) -> str:
    return "".join(s.split()).replace("\\left", "").replace("\\right", "").replace("\\!", "").rstrip(".")


def math_equal(pred: str, gold: str, timeout_s: float = 5.0) -> bool:
    """Whether two LaTeX answers (contents of a box) are mathematically equal.

    >>> math_equal("\\\\frac{1}{2}", "0.5"), math_equal("3", "4")
    (True, False)
    """
    if _normal(pred) == _normal(gold):
        return True
    from math_verify import parse, verify

    limit = max(1, round(timeout_s)) if threading.current_thread() is threading.main_thread() else None
    try:
        g = parse(f"\\boxed{{{gold}}}", parsing_timeout=limit)
        p = parse(f"\\boxed{{{pred}}}", parsing_timeout=limit)
        return bool(g and p and verify(g, p, timeout_seconds=limit))
    except Exception:  # a pathological expression, or its time limit: not a match
        return False


def boxed_reward(completion: str, answer: str, timeout_s: float = 5.0) -> float:
    """1.0 when the completion's last \\boxed{} equals the reference; no box, no reward.

    >>> boxed_reward("so the answer is \\\\boxed{\\\\dfrac{3}{4}}", "\\\\frac34")
    1.0
    >>> boxed_reward("it is 3/4", "\\\\frac34")
    0.0
    """
    pred = last_boxed(completion)
    return float(pred is not None and math_equal(pred, answer, timeout_s))
