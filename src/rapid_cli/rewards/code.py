"""Pulling a program out of a completion.

The rule (the paper's): the LAST ```python fenced block; failing that, the last fenced block of any
language; failing that, the raw completion. A final fence left open (generation hit max_tokens) still
counts as a block up to the end of the text.
"""

from __future__ import annotations

import re

_FENCE = re.compile(r"```([\w+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)


def extract_code(text: str) -> str:
    """
    >>> extract_code("Sure:\\n```python\\ndef f():\\n    return 1\\n```\\nDone.")
    'def f():\\n    return 1\\n'
    >>> extract_code("```\\nx = 1\\n```")
    'x = 1\\n'
    >>> extract_code("x = 2")
    'x = 2'
    """
    blocks = _FENCE.findall(text)
    python = [body for lang, body in blocks if lang.lower() in ("python", "py", "python3")]
    if python:
        return python[-1]
    if blocks:
        return blocks[-1][1]
    return text
