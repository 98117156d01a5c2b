"""GSM8K's final answer, read the way the benchmark's standard scorers read it (docs/tasks.md, "GSM8K").

Source: EleutherAI lm-evaluation-harness, lm_eval/tasks/gsm8k/gsm8k.yaml (task version 3.0). Its
"strict-match" filter is the FIRST match of `#### (\\-?[0-9\\.\\,]+)`; its "flexible-extract" filter is
the LAST match of `(-?[$0-9.,]{2,})|(-?[0-9]+)`; both are compared after removing "," and "$" and a
final ".". rapid keeps that order (the `####` statement first, then a final number) and reads numbers
as numbers instead of strings. The rule, in order; the first that yields a number decides:

1. `####`: the FIRST `####` followed (after spaces and an optional `$`) by a number: "#### 18",
   "#### $1,234.50", "#### 18 dollars" (units after the number are fine). A `####` without a number
   after it (quoted from the prompt: 'the final answer after "####".') is skipped, never fatal.
2. `\\boxed{}`: the LAST box whose content is a number, optionally with `$`, `%` or a unit word/`\\text{}`.
3. "the answer is N": the LAST "the answer", "the final/correct answer", "final answer" or, at the start of
   a line, "Answer" followed by is/was/=/: and a number (case-insensitive: "The final answer is 18",
   "Answer: $18", "so the answer is **18**."); "Adam's answer is 5" is not such a statement.
4. The LAST number in the completion -- only when the completion ended by itself. In a completion cut
   off at max_tokens (finish_reason "length"), a number that merely appears earns nothing: only rules 1-3,
   explicit final-answer statements, count there.

A number is `-?digits` with optional thousands separators (`1,234`) and decimals; "2:45" is not one. In
rules 1 and 3 a number that starts a calculation states the calculation's result ("the answer is 3 * 6 =
18" states 18; "#### 16 - 3 = 13" states 13), and one without a result ("the answer is 2/3 of") nothing.
Answers compare as exact fractions: "18.00" == "18", "1,234.50" == "1234.5".
"""

from __future__ import annotations

import re
from fractions import Fraction

from rapid_cli.rewards.answers import last_boxed, to_number

# A number: optional sign (not a minus between two operands, as in "8-3"), digits with proper thousands
# groups or plain digits, optional decimals; it must not run into a letter or digit ("4GRADS", "2E"), and a
# time or ratio ("2:45", "1:3") is not a number.
_NUM = r"(?:(?<![\w)\]])-)?(?<![\w.:])(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?!\w|[.,:]\d)"
_NUMBER = re.compile(_NUM)
# What makes a number a term of a calculation instead of a result: an operator and another operand.
_CONTINUES = re.compile(r"[ \t]*(?:[-+*/×÷^=x]|\\times|\\cdot)\s*[\d(]")
# The rest of a calculation that starts at a stated number, up to its result: "3 * 6 = 18", "1 + (2 * 3) = 7".
_OPERAND = r"[ \t]*(?:[-+*/×÷^x]|\\times|\\cdot)[ \t]*\(?[ \t]*\$?" + _NUM + r"\)?"
_TO_RESULT = re.compile(r"(?:" + _OPERAND + r")+[ \t]*=[ \t]*(?:\\?\$[ \t]*)?(" + _NUM + ")")
_HASHES = re.compile(r"####[ \t]*(?:\\?\$[ \t]*)?(" + _NUM + ")")
_ANSWER_IS = re.compile(
    r"(?:\bthe\s+(?:final\s+|correct\s+)?answer|\bfinal\s+answer|^[ \t*#>-]*answer)"
    r"\s*(?:is|was|would be|will be|equals|=|:)\s*[:=]?(?:\*\*|__|\\?\$|\\\(|\\\[|\s)*(" + _NUM + ")",
    re.IGNORECASE | re.MULTILINE)
_BOXED_NUMBER = re.compile(r"\s*(?:\\\$|\$)?\s*(" + _NUM + r")\s*(?:\\%|%)?\s*"
                           r"(?:\\text\{[^{}]*\}|\\mathrm\{[^{}]*\}|[A-Za-z ]*)\s*")


def _clean(number: str) -> str:
    return number.replace(",", "")


def _statements(pattern: re.Pattern, text: str) -> list[str]:
    """The values that `pattern` states: the number it captures, or, when that number starts a calculation
    ("the answer is 3 * 6 = 18"), the calculation's result; a calculation without one states nothing."""
    out = []
    for m in pattern.finditer(text):
        if not _CONTINUES.match(text, m.end(1)):
            out.append(_clean(m.group(1)))
            continue
        calc = _TO_RESULT.match(text, m.end(1))
        if calc and not _CONTINUES.match(text, calc.end(1)):
            out.append(_clean(calc.group(1)))
    return out


def explicit_answer(text: str) -> str | None:
    """The answer a completion states explicitly (rules 1-3), or None.

    >>> explicit_answer("so 16 - 3 - 4 = 9 eggs, 9 * 2 = 18.\\n#### 18 dollars")
    '18'
    >>> explicit_answer('I will give the final answer after "####". 3 + 4 = 7, so the answer is $7.')
    '7'
    >>> explicit_answer("it is \\\\boxed{1,234.50}"), explicit_answer("so the answer is 3 * 6 = 18 bolts")
    ('1234.50', '18')
    >>> explicit_answer("Adam's answer is 5, and the answer is 2/3 of the total") is None
    True
    """
    hashes = _statements(_HASHES, text)
    if hashes:
        return hashes[0]
    boxed = last_boxed(text)
    if boxed is not None:
        match = _BOXED_NUMBER.fullmatch(boxed)
        if match:
            return _clean(match.group(1))
    stated = _statements(_ANSWER_IS, text)
    return stated[-1] if stated else None


def gsm8k_answer(text: str, truncated: bool = False) -> str | None:
    """The completion's final answer under the rule in the module docstring; `truncated`: it was cut off at
    max_tokens, so only an explicit statement counts.

    >>> gsm8k_answer("She sells 9 eggs at $2, so she makes $18 a day.")
    '18'
    >>> gsm8k_answer("She sells 9 eggs at $2, so she makes $18", truncated=True) is None
    True
    """
    explicit = explicit_answer(text)
    if explicit is not None or truncated:
        return explicit
    numbers = _NUMBER.findall(text)
    return _clean(numbers[-1]) if numbers else None


def gsm8k_reward(completion: str, answer: str, truncated: bool = False) -> float:
    """1.0 when the completion's final answer (gsm8k_answer) equals the reference number exactly, else 0.0.

    >>> gsm8k_reward("#### 18.00", "18"), gsm8k_reward("The answer is $1,234.50.", "1234.5")
    (1.0, 1.0)
    >>> gsm8k_reward("I eat 3 and bake 4: 16 - 7 = 9, and 9 * 2 = 18", "18", truncated=True)
    0.0
    """
    got = to_number(gsm8k_answer(completion, truncated))
    want: Fraction | None = to_number(answer)
    return float(got is not None and want is not None and got == want)
