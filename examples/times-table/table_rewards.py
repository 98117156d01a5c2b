"""The times-table example's own reward function, in TRL's form: `fn(completions, **kwargs) -> list[float]`.

rapid passes every column of the data (`prompt`, `a`, `op`, `b`, `answer`) by name; this one needs none.
The same function works unchanged as a `reward_funcs` entry of TRL's GRPOTrainer.
"""

import re

_NUMBER = re.compile(r"-?\d+")


def just_the_number(completions, **kwargs):
    """1.0 when the reply is a bare number and nothing else (the prompt asks for that), else 0.0.

    >>> just_the_number(["12", " 7.", "The answer is 12."])
    [1.0, 1.0, 0.0]
    """
    return [1.0 if _NUMBER.fullmatch(c.strip().rstrip(".")) else 0.0 for c in completions]
