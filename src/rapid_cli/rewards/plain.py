"""Plain data across the sandbox wall: the only values a code reward lets out of (or into) the jail.

`encode` turns a value built from None, bool, int, float, complex, str, bytes, list, tuple, set,
frozenset and dict (and numpy scalars and the `collections` dicts, which become their plain
equivalent) into JSON-ready data;
anything else (a custom class, a str subclass, an object whose __eq__ lies) raises TypeError, so it
cannot cross. JSON alone would merge tuples and lists (a wrong type that Python's `==` tells apart),
so containers carry a tag: ["t", [...]] is a tuple. `decode` rebuilds the value from `json.loads`
output and accepts nothing else, so the harness outside never evaluates or unpickles what a program
wrote.

This module is also pasted into the jail programs (`source()`): it must stay self-contained (json
only). Inside the jail it is untrusted like everything else there; outside, only `decode` and
`loads` run on what comes back.
"""

from __future__ import annotations

import json
from functools import cache

_MAX_DEPTH = 64  # deeper than any test value; keeps decode from recursing without bound
_SCALARS = {bool, int, float, str, type(None)}


def encode(value, depth: int = 0):
    if depth > _MAX_DEPTH:
        raise TypeError("value nested too deeply")
    kind = type(value)
    if value is None or kind in (bool, int, float, str):
        return value
    if kind is list or kind is tuple:
        tag = "l" if kind is list else "t"
        if set(map(type, value)) <= _SCALARS:  # the common case, without a call per element
            return [tag, list(value)]
        return [tag, [encode(v, depth + 1) for v in value]]
    if kind in (set, frozenset):
        return ["s" if kind is set else "f", [encode(v, depth + 1) for v in value]]
    if kind is dict or (isinstance(value, dict) and kind.__module__ == "collections"):  # Counter, OrderedDict, ...
        return ["d", [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in value.items()]]
    if kind is bytes:
        return ["b", value.hex()]
    if kind is complex:
        return ["c", [value.real, value.imag]]
    if getattr(kind, "__module__", None) == "numpy" and getattr(value, "ndim", None) == 0:
        return encode(value.item(), depth)  # numpy scalar (np.float64, np.int64, np.bool_)
    raise TypeError(f"not plain data: {kind.__name__}")


def decode(data, depth: int = 0):
    if depth > _MAX_DEPTH:
        raise ValueError("value nested too deeply")
    if data is None or type(data) in (bool, int, float, str):
        return data
    if type(data) is not list or len(data) != 2 or type(data[0]) is not str:
        raise ValueError("malformed plain data")
    tag, body = data
    if tag == "b" and type(body) is str:
        return bytes.fromhex(body)
    if tag == "c" and type(body) is list and len(body) == 2 and all(type(x) in (int, float) for x in body):
        return complex(body[0], body[1])
    if type(body) is not list:
        raise ValueError("malformed plain data")
    if tag == "d":
        if not all(type(kv) is list and len(kv) == 2 for kv in body):
            raise ValueError("malformed plain data")
        return {decode(k, depth + 1): decode(v, depth + 1) for k, v in body}
    items = [decode(v, depth + 1) for v in body]
    if tag == "l":
        return items
    if tag == "t":
        return tuple(items)
    if tag == "s":
        return set(items)
    if tag == "f":
        return frozenset(items)
    raise ValueError(f"unknown plain-data tag {tag!r}")


def canonical(data) -> str:
    """One string for all encoded values that Python's == calls equal (1, 1.0 and True; a set and a
    frozenset; dicts in any order), different strings otherwise; ValueError for NaN, which equals
    nothing. Each form is self-delimiting, so concatenations cannot collide."""
    kind = type(data)
    if data is None:
        return "N"
    if kind is bool or kind is int:
        return f"i{int(data)}"
    if kind is float:
        if data != data:
            raise ValueError("NaN has no canonical form")
        return f"i{int(data)}" if data.is_integer() else f"f{data!r}"
    if kind is str:
        return json.dumps(data)
    tag, body = data
    if tag in ("l", "t"):
        kinds = set(map(type, body))
        if kinds == {int}:  # the common cases, without a call per element
            return f"{tag}[i" + ",i".join(map(str, body)) + "]"
        if kinds <= {int, str}:
            return tag + "[" + ",".join(json.dumps(x) if type(x) is str else f"i{x}" for x in body) + "]"
        return tag + "[" + ",".join(canonical(x) for x in body) + "]"
    if tag in ("s", "f"):
        return "s{" + ",".join(sorted(canonical(x) for x in body)) + "}"
    if tag == "d":
        return "d{" + ",".join(sorted(canonical(k) + ":" + canonical(v) for k, v in body)) + "}"
    if tag == "c":
        return canonical(body[0]) if body[1] == 0 else f"c({canonical(body[0])},{canonical(body[1])})"
    return f"b{body}"


def fingerprint(data) -> tuple[int, str]:
    """(length, sha256) of canonical(data), without building the whole string of a long list or tuple."""
    from hashlib import sha256  # here: importing it costs a jail run more than most tests take

    h, n = sha256(), 0
    if type(data) is list and data[0] in ("l", "t"):
        parts = (("," if i else "") + canonical(x) for i, x in enumerate(data[1]))
        parts = ([data[0] + "["], parts, ["]"])
    else:
        parts = ([canonical(data)],)
    for group in parts:
        for text in group:
            h.update(text.encode())
            n += len(text)
    return n, h.hexdigest()


def digest(data) -> str:
    """The sha256 of an encoded value's canonical form: a large value is compared by its digest."""
    return fingerprint(data)[1]


def dumps(value) -> str:
    return json.dumps(encode(value), separators=(",", ":"))


def loads(text: str):
    """The plain value in `text`; ValueError (never anything else) when it is not plain data."""
    try:
        return decode(json.loads(text))
    except (ValueError, TypeError, RecursionError) as e:  # TypeError: an unhashable set member or key
        raise ValueError(f"not plain data: {e}") from None


@cache
def source() -> str:
    """This module's code, for pasting into a jail program."""
    import inspect
    import sys

    return inspect.getsource(sys.modules[__name__]).replace("from __future__ import annotations\n", "")
