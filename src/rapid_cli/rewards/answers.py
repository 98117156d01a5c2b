"""Final-answer extraction and numeric answer checking.

Extraction is strict and in this order; the first rule that matches decides:
1. the content of the LAST `\\boxed{...}` (balanced braces);
2. the text after the LAST `####` (GSM8K's reference format), up to the end of that line;
3. the LAST number in the text (integers, decimals, negatives, thousands separators, simple fractions a/b).
Nothing else: a reply with no number has no answer and earns 0.
"""

from __future__ import annotations

import re
from fractions import Fraction

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?|-?\.\d+")


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} (or \\fbox{...}), braces balanced; also the brace-less `\\boxed 2`.

    >>> last_boxed(r"so \\boxed{\\frac{1}{2}} and \\boxed{3}"), last_boxed(r"is $\\boxed 9$.")
    ('3', '9')
    """
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    rest = text[start + (6 if text.startswith("\\boxed", start) else 5) :]
    if not rest.startswith("{"):
        match = re.match(r" +([^\s$]+)", rest)
        return match.group(1).rstrip(".") if match else None
    depth = 0
    for j, ch in enumerate(rest):
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if depth == 0:
            return rest[1:j].strip()
    return None


def last_number(text: str) -> str | None:
    """
    >>> last_number("3 apples and 1,250.5 pears")
    '1250.5'
    """
    matches = _NUMBER.findall(text)
    return matches[-1].replace(",", "") if matches else None


def extract_answer(text: str) -> str | None:
    """The final answer by the rules in the module docstring.

    >>> extract_answer("2 + 3 = 5. #### 5")
    '5'
    >>> extract_answer("The sum is 12.")
    '12'
    >>> extract_answer("no number here") is None
    True
    """
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    if "####" in text:
        tail = text.rsplit("####", 1)[1].strip().splitlines()
        return tail[0].strip() if tail else None
    return last_number(text)


def to_number(text: str | None) -> Fraction | None:
    """Parses '1,234', '-3.50', '$12', '7/2', '5.' into an exact Fraction; None when it is not a number."""
    if text is None:
        return None
    s = text.strip().replace(",", "").replace("$", "").replace("\\%", "").rstrip("%").rstrip(".").strip()
    try:
        return Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None


def numeric_reward(completion: str, answer: str) -> float:
    """1.0 when the extracted final answer equals the reference number exactly, else 0.0.

    >>> numeric_reward("I think it is 4, no: 5", "5")
    1.0
    >>> numeric_reward("\\\\boxed{1,000}", "1000")
    1.0
    >>> numeric_reward("no idea", "5")
    0.0
    """
    got = to_number(extract_answer(completion))
    want = to_number(answer)
    return float(got is not None and want is not None and got == want)
