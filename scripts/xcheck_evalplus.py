r"""Cross-check rapid's MBPP+ reward against EvalPlus's own scorer, on the same programs.

    python -m venv /tmp/evalplus-venv && /tmp/evalplus-venv/bin/pip install evalplus   # once, NOT in rapid's venv
    .venv/bin/python scripts/xcheck_evalplus.py ../shared/data/mbppplus/MbppPlus-OriginFmt.jsonl.gz \
        --evalplus-python /tmp/evalplus-venv/bin/python --problems 80 --workers 2

Per problem it builds a set of programs: the gold solution; the gold function wrapped so that its return value
changes in one way wherever that changes an expected value (scripts/mbpp_verdict.py's shape mutants, plus
wrong types, one element fewer or more, an int off by one, a negated bool, a float off by 1e-3 or within
1e-9, None, and two that should still pass: an int returned as a float, and one that prints its value; the
wrapper takes the function's name, so a recursive gold solution calls it too); a program that hard-codes
the visible tests' answers; and an empty one. Each program is scored twice:
- rapid: MBPPTask.rewards under the default reward config (the sandbox, EvalPlus-style per-input limits,
  the verdict taken outside; the program as written, without `test_imports`, as both tools run it);
- EvalPlus: `evalplus.evaluate.evaluate("mbpp", samples=...)`, run by --evalplus-python on this same file
  (`--evalplus-side`): expected outputs from running the gold solution, then `check_correctness` on the base
  and the plus inputs, each input within max(min_time_limit, 4 x the gold solution's time on it). A program
  passes when both statuses are "pass" (EvalPlus's MBPP+ verdict).
Then it prints the agreement, the counts per kind of program, and every disagreement.

The data file is the data set as rapid reads it (MbppPlus-OriginFmt: each problem's `test` script holds
`inputs`, `results` and the tolerance). EvalPlus reads its "plus" format through MBPP_OVERRIDE_PATH; the
EvalPlus side writes that file into --out from the same records: the inputs serialised the way EvalPlus's
release file is (its mbpp_serialize_inputs, then JSON; it deserialises them on load; problems whose inputs
do not survive that round trip are named); `canonical_solution` = test_imports + code (EvalPlus runs it for
the expected outputs, as rapid's reference run does; the programs scored get no test_imports on either side);
the first len(test_list) inputs as `base_input` and the rest as `plus_input` (this file does not say where
EvalPlus's base inputs end; the verdict of base + plus does not depend on it except through EvalPlus's float
tolerance carried from one input to the next and its 60-s cap per part). Nothing is downloaded, nothing is
committed: the converted file, the programs and both sides' verdicts stay in --out.

Problems: every one whose rule is special (set comparison, a special oracle, a not-None check, a non-zero
tolerance, a `ref_func`) and problems spread evenly over the rest, up to --problems, all among the problems
rapid keeps (a problem whose gold solution cannot pass within rapid's limits is left out of its splits and
has no rapid verdict; named, not compared).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# name -> one line that changes the gold function's return value `r` (the wrapper of mbpp_verdict.wrapped);
# mbpp_verdict.MUTANTS' four shape changes come first. "pass" kinds should pass under both scorers.
EXTRA_MUTANTS = {
    "repr for the value": "r = repr(r)",
    "one element fewer": "r = r[:-1] if type(r) in (list, tuple, str) and len(r) > 0 else r",
    "one element more": "r = r + r[-1:] if type(r) in (list, tuple) and len(r) > 0 else r",
    "int + 1": "r = r + 1 if type(r) is int else r",
    "bool negated": "r = (not r) if type(r) is bool else r",
    "float + 1e-3": "r = r + 1e-3 if type(r) is float else r",
    "None": "r = None",
    "float * (1 + 1e-9) (pass)": "r = r * (1 + 1e-9) if type(r) is float else r",
    "int as float (pass)": "r = float(r) if type(r) is int else r",
    "prints its value (pass)": "print(r)",
}


def script_parts(test: str) -> dict:
    """The EvalPlus test script's pieces: the function name, the tolerance, the code before the final loop,
    and the source text of each `inputs` / `results` element (None without a `results` list)."""
    tree = ast.parse(test)
    loop = tree.body[-1]
    call = loop.body[0].value
    inner, _, atol = call.args
    found = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name) \
                and node.targets[0].id in ("inputs", "results") and isinstance(node.value, ast.List):
            found[node.targets[0].id] = node.value.elts
    return {"entry": inner.func.id, "atol": atol.value, "header": "\n".join(test.splitlines()[: loop.lineno - 1]),
            "inputs": found.get("inputs"), "results": found.get("results"), "ref_func": "ref_func" in test}


def segment(test: str, node) -> str:
    return ast.get_source_segment(test, node)


# -- rapid's side (rapid's venv) ----------------------------------------------------------------------------
def changes(line: str):
    """The mutant line as a function of the value, to find where it changes an expected value."""
    scope: dict = {}
    exec(f"def change(r):\n    {line}\n    return r\n", scope)  # noqa: S102 - our own constant lines
    return scope["change"]


def differs(a, b) -> bool:
    try:
        return type(a) is not type(b) or bool(a != b)
    except Exception:  # noqa: BLE001 - an unorderable or odd value: count it as changed
        return True


def hard_coded(test: str, parts: dict, n: int) -> str | None:
    """A program returning the visible tests' expected values for their arguments, None otherwise."""
    if parts["results"] is None or parts["inputs"] is None:
        return None
    rows = [f"    ({segment(test, a)}, {segment(test, r)}),"
            for a, r in list(zip(parts["inputs"], parts["results"], strict=False))[:n]]
    return ("from math import inf, nan\n\n_known = [\n" + "\n".join(rows) + "\n]\n\n\n"
            f"def {parts['entry']}(*args):\n    for a, r in _known:\n        if list(args) == list(a):\n"
            "            return r\n")


def select(task, problems, parts: dict, count: int, ids: list[str] | None):
    if ids:
        return [p for p in problems if p.id in ids]

    def special(p) -> bool:
        rule = task.source(p).rules[0]
        return bool(rule.wrap or rule.oracle or rule.observe != "value" or parts[p.id]["atol"]
                    or parts[p.id]["ref_func"])

    first = [p for p in problems if special(p)][:count]
    rest = [p for p in problems if p not in first]
    k = max(0, count - len(first))
    spread = [rest[round(i * len(rest) / k)] for i in range(k)] if k and rest else []
    chosen = {p.id for p in first + spread}
    return [p for p in problems if p.id in chosen]


def programs_for(task, p, test_parts: dict, suite) -> list[tuple[str, str]]:
    """(kind, code) for one problem: gold, the mutants that change one of its expected values, hard-coded,
    empty."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from mbpp_verdict import MUTANTS, wrapped
    from rapid_cli.rewards.verdict import Digest

    entry = task.source(p).entry
    values = [c.expected for c in suite.checks if type(c.expected) is not Digest and c.rule.observe == "value"]
    out = [("gold", p.answer)]
    mutants = {name: m[2] for name, m in MUTANTS.items()} | EXTRA_MUTANTS
    for name, line in mutants.items():
        change = changes(line)
        hit = name.startswith("prints") or any(differs(change(v), v) for v in values)
        if hit:
            out.append((name, wrapped(p.answer, entry, line)))
    fixed = hard_coded(p.meta["test"], test_parts, len(p.meta["test_list"]))
    if fixed is not None:
        out.append(("hard-codes the visible tests", fixed))
    out.append(("empty", ""))
    return out


def fence(code: str) -> str:
    """The program as a completion (a ```python block); the empty program as an empty completion."""
    return f"```python\n{code}\n```" if code else ""


def rapid_side(args):
    sys.path.insert(0, str(ROOT / "src"))
    from rapid_cli.config import compose_config
    from rapid_cli.tasks import make_task

    cfg = compose_config(["task=mbpp", f"task.data_path={Path(args.data).resolve()}",
                          f"reward.workers={args.workers}"])
    task = make_task(cfg.task, cache_dir=args.cache, reward_cfg=cfg.reward)
    problems = sorted([p for split in task.load() for p in split], key=lambda p: int(p.id.split("/")[1]))
    parts = {p.id: script_parts(p.meta["test"]) for p in problems}
    chosen = select(task, problems, parts, args.problems, args.ids)
    t0 = time.time()
    left_out = task.gold_fails(chosen)
    chosen = [p for p in chosen if p.id not in left_out]
    print(f"{len(chosen)} problems ({time.time() - t0:.0f} s checking their gold solutions in rapid's sandbox); "
          f"left out by rapid (gold solution cannot pass within its limits), not compared: "
          f"{', '.join(f'{k} ({v})' for k, v in left_out.items()) or 'none'}")
    rows = []
    for p, suite in zip(chosen, task.suites(chosen), strict=True):
        for kind, code in programs_for(task, p, parts[p.id], suite):
            rows.append({"task_id": p.id, "kind": kind, "solution": code})
    print(f"{len(rows)} programs; scoring with rapid ({args.workers} sandbox workers) ...", flush=True)
    by_id = {p.id: p for p in chosen}
    t0 = time.time()
    rewards = task.rewards([fence(r["solution"]) for r in rows], [by_id[r["task_id"]] for r in rows])
    for r, v in zip(rows, rewards, strict=True):
        r["rapid"] = v
    print(f"rapid: {time.time() - t0:.0f} s", flush=True)
    records = [{"task_id": p.id, "prompt": p.question, "code": p.answer, **{k: p.meta[k] for k in
                                                                           ("test_imports", "test_list", "test")}}
               for p in chosen]
    return task, by_id, rows, records


def rapid_reason(task, p, completion: str) -> str:
    """Why rapid scores a program 0, from a second run of it (the call that failed, or how the run ended)."""
    from rapid_cli.tasks.code import _failure

    passed, outcome = task._judged([task.program(completion, p)], [p])[0]
    return "passes now (a timing difference?)" if passed else _failure(outcome)


# -- EvalPlus's side (--evalplus-python, run on this file with --evalplus-side) ------------------------------
def same(a, b) -> bool:
    """Equal with the same types all the way down (a round trip through JSON must keep tuples tuples; an
    input's own container, a list or a tuple of the arguments, does not matter)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    try:
        return bool(a == b) or (a != a and b != b)  # noqa: PLR0124 - nan
    except Exception:  # noqa: BLE001
        return False


def evalplus_side(out: Path, workers: int, min_time_limit: float | None) -> None:
    records = [json.loads(line) for line in (out / "problems.jsonl").read_text().splitlines()]
    plus_path = out / "MbppPlus-converted.jsonl"
    os.environ["MBPP_OVERRIDE_PATH"] = str(plus_path)
    os.environ.setdefault("XDG_CACHE_HOME", str(out / "cache"))  # EvalPlus caches the expected outputs there
    from evalplus.data.mbpp import mbpp_deserialize_inputs, mbpp_serialize_inputs

    lossy = []
    with plus_path.open("w") as f:
        for rec in records:
            parts = script_parts(rec["test"])
            scope: dict = {}
            exec(parts["header"], scope)  # noqa: S102 - the data set's own test script, as EvalPlus's tests run it
            inputs = scope["inputs"]
            text = json.dumps(mbpp_serialize_inputs(rec["task_id"], inputs))
            back = mbpp_deserialize_inputs(rec["task_id"], json.loads(text))
            if len(back) != len(inputs) or not all(same(list(b), list(a)) for b, a in zip(back, inputs, strict=True)):
                lossy.append(rec["task_id"])
            n = len(rec["test_list"])
            plus = json.loads(text)
            f.write(json.dumps({
                "task_id": rec["task_id"], "prompt": rec["prompt"], "entry_point": parts["entry"],
                "canonical_solution": "\n".join([*rec["test_imports"], rec["code"]]), "atol": parts["atol"],
                "base_input": plus[:n], "plus_input": plus[n:], "contract": "", "assertion": "",
            }) + "\n")
    from evalplus.evaluate import evaluate

    kwargs = {} if min_time_limit is None else {"min_time_limit": min_time_limit}
    evaluate("mbpp", samples=str(out / "samples.jsonl"), parallel=workers, **kwargs)
    from evalplus import __version__
    from evalplus.config import DEFAULT_GT_TIME_LIMIT_FACTOR, DEFAULT_MIN_TIME_LIMIT

    (out / "evalplus-side.json").write_text(json.dumps({
        "lossy_inputs": lossy, "version": __version__,
        "min_time_limit": DEFAULT_MIN_TIME_LIMIT if min_time_limit is None else min_time_limit,
        "gt_time_limit_factor": DEFAULT_GT_TIME_LIMIT_FACTOR}))


# -- both -----------------------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data", nargs="?", help="MBPP+ file (MbppPlus-OriginFmt.jsonl.gz)")
    ap.add_argument("--evalplus-python", default=os.environ.get("EVALPLUS_PYTHON", "/tmp/evalplus-venv/bin/python"),
                    help="a Python with evalplus installed (default: $EVALPLUS_PYTHON or /tmp/evalplus-venv)")
    ap.add_argument("--problems", type=int, default=80, help="how many problems (default 80)")
    ap.add_argument("--ids", nargs="+", metavar="ID", help="these problems instead (Mbpp/3 ...)")
    ap.add_argument("--workers", type=int, default=2, help="programs run at once on each side (default 2)")
    ap.add_argument("--min-time-limit", type=float, default=None,
                    help="EvalPlus's per-input minimum in s (default: the installed EvalPlus's own default)")
    ap.add_argument("--cache", default=None, help="rapid's cache directory (its reference runs are cached there)")
    ap.add_argument("--out", default=None, help="where the converted data, programs and verdicts go (a temp dir)")
    ap.add_argument("--evalplus-side", metavar="DIR", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.evalplus_side:
        return evalplus_side(Path(args.evalplus_side), args.workers, args.min_time_limit)
    if not args.data:
        ap.error("give the MBPP+ data file")
    if not Path(args.evalplus_python).exists():
        sys.exit(f"{args.evalplus_python} not found: install evalplus into a venv of its own "
                 "(python -m venv /tmp/evalplus-venv && /tmp/evalplus-venv/bin/pip install evalplus)")
    out = Path(args.out or tempfile.mkdtemp(prefix="xcheck-evalplus-"))
    out.mkdir(parents=True, exist_ok=True)

    task, by_id, rows, records = rapid_side(args)
    (out / "problems.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (out / "samples.jsonl").write_text("".join(json.dumps({"task_id": r["task_id"], "solution": r["solution"]})
                                               + "\n" for r in rows))
    print(f"scoring with EvalPlus ({args.evalplus_python}, {args.workers} workers; log: {out / 'evalplus.log'}) ...",
          flush=True)
    (out / "samples_eval_results.json").unlink(missing_ok=True)  # EvalPlus would reuse an old one
    t0 = time.time()
    cmd = [args.evalplus_python, str(Path(__file__).resolve()), "--evalplus-side", str(out),
           "--workers", str(args.workers)]
    cmd += ["--min-time-limit", str(args.min_time_limit)] if args.min_time_limit is not None else []
    with (out / "evalplus.log").open("w") as log:
        done = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, check=False)
    if done.returncode != 0:
        sys.exit(f"the EvalPlus side failed ({done.returncode}):\n"
                 + "\n".join((out / "evalplus.log").read_text().splitlines()[-30:]))
    side = json.loads((out / "evalplus-side.json").read_text())
    print(f"EvalPlus {side['version']}: {time.time() - t0:.0f} s (min_time_limit {side['min_time_limit']} s, "
          f"gt_time_limit_factor {side['gt_time_limit_factor']}); problems whose inputs do not survive its JSON "
          f"format: {', '.join(side['lossy_inputs']) or 'none'}")
    results = json.loads((out / "samples_eval_results.json").read_text())["eval"]
    seen: dict[str, int] = {}
    for r in rows:
        i = seen[r["task_id"]] = seen.get(r["task_id"], -1) + 1
        res = results[r["task_id"]][i]
        assert res["solution"] == r["solution"], (r["task_id"], i)
        r["evalplus"] = float(res["base_status"] == res["plus_status"] == "pass")
        r["statuses"] = f"base {res['base_status']}, plus {res['plus_status']}"
        r["failed_input"] = (res["base_fail_tests"] or res["plus_fail_tests"] or [None])[0]
    (out / "verdicts.jsonl").write_text("".join(json.dumps(r, default=repr) + "\n" for r in rows))

    n = len(rows)
    agree = sum(r["rapid"] == r["evalplus"] for r in rows)
    print(f"\n{len(by_id)} problems, {n} programs: rapid and EvalPlus (base + plus) agree on {agree} "
          f"({100 * agree / n:.2f}%); rapid passes {int(sum(r['rapid'] for r in rows))}, EvalPlus "
          f"{int(sum(r['evalplus'] for r in rows))}")
    print(f"{'program':34} {'n':>5} {'both 1':>7} {'both 0':>7} {'rapid 1 / EP 0':>15} {'rapid 0 / EP 1':>15}")
    for kind in dict.fromkeys(r["kind"] for r in rows):
        ks = [r for r in rows if r["kind"] == kind]
        print(f"{kind:34} {len(ks):5d} {sum(r['rapid'] == r['evalplus'] == 1 for r in ks):7d} "
              f"{sum(r['rapid'] == r['evalplus'] == 0 for r in ks):7d} "
              f"{sum(r['rapid'] > r['evalplus'] for r in ks):15d} {sum(r['rapid'] < r['evalplus'] for r in ks):15d}")
    diff = [r for r in rows if r["rapid"] != r["evalplus"]]
    if diff:
        print(f"\n{len(diff)} disagreements:")
    for r in diff:
        why = rapid_reason(task, by_id[r["task_id"]], fence(r["solution"])) if not r["rapid"] else ""
        failed = "" if r["failed_input"] is None else f"; EvalPlus's failing input {str(r['failed_input'])[:120]}"
        print(f"- {r['task_id']} {r['kind']}: rapid {r['rapid']:g}{f' ({why})' if why else ''}, EvalPlus "
              f"{r['evalplus']:g} ({r['statuses']}{failed})")
    print(f"\n(programs, converted data and verdicts: {out})")


if __name__ == "__main__":
    main()
