"""Writes problems.jsonl for the times-table example: every one-digit sum and product (200 rows).

    python examples/times-table/make_data.py            # -> examples/times-table/problems.jsonl

Columns: prompt (the question), a, op, b, answer. Generated, so nothing is copied from anywhere.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def rows() -> list[dict]:
    out = []
    for op, apply in (("+", int.__add__), ("*", int.__mul__)):
        for a in range(10):
            for b in range(10):
                out.append({"prompt": f"What is {a} {op} {b}? Answer with just the number.", "a": a, "op": op, "b": b,
                            "answer": apply(a, b)})
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).with_name("problems.jsonl")))
    path = Path(parser.parse_args().out)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows()))
    print(f"wrote {len(rows())} problems to {path}")
