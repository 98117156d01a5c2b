"""task=custom: a user's data in every format, field/template mapping, weighted reward functions with
per-function metrics, TRL-style functions unchanged, one-line errors for bad data and bad functions,
eval at a reward threshold, and the CLI (train and eval) on the tiny model with a user's module."""

from __future__ import annotations

import gzip
import json
import os
import shlex
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import RAPID, REPO, TINY, compose
from rapid_cli.errors import RapidError
from rapid_cli.tasks import make_task

ROWS = [{"question": f"{a} + {a}", "answer": str(2 * a), "unit": "apples"} for a in range(10)]
NUMERIC = "{_target_: rapid_cli.rewards.numeric_match}"


def task_for(*overrides: str, functions: str = NUMERIC):
    cfg = compose(["task=custom", "task.prompt_field=question", f"reward.functions=[{functions}]", *overrides])
    return make_task(cfg.task, seed=0, reward_cfg=cfg.reward)


def write(path, rows=ROWS):
    """`rows` in the format the file name says."""
    name = str(path)
    if name.endswith(".parquet"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    elif name.endswith(".csv"):
        import csv

        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    elif name.endswith(".json"):
        path.write_text(json.dumps(rows))
    else:
        text = "".join(json.dumps(r) + "\n" for r in rows)
        path.write_bytes(gzip.compress(text.encode()) if name.endswith(".gz") else text.encode())
    return path


def one_line(err) -> str:
    text = str(err.value)
    assert "\n" not in text, text
    return text


# -- data ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["p.jsonl", "p.jsonl.gz", "p.json", "p.csv", "p.parquet"])
def test_every_file_format_loads_and_is_split_by_seed(tmp_path, name):
    task = task_for(f"task.data_path={write(tmp_path / name)}", "task.test_fraction=0.2", "task.split_seed=3")
    train, test = task.train, task.test
    assert len(train) == 8 and len(test) == 2
    assert sorted(p.question for p in train + test) == sorted(r["question"] for r in ROWS)
    assert {p.answer for p in train + test} == {r["answer"] for r in ROWS}
    other = task_for(f"task.data_path={tmp_path / name}", "task.test_fraction=0.2", "task.split_seed=4")
    assert [p.question for p in other.test] != [p.question for p in test]  # the seed decides the cut
    again = task_for(f"task.data_path={tmp_path / name}", "task.test_fraction=0.2", "task.split_seed=3")
    assert [p.question for p in again.test] == [p.question for p in test]


def test_save_to_disk_directories_load(tmp_path):
    import datasets

    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "one"))
    task = task_for(f"task.data_path={tmp_path / 'one'}", "task.test_fraction=0.3")
    assert len(task.train) == 7 and len(task.test) == 3
    datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS[:6]),
                          "test": datasets.Dataset.from_list(ROWS[6:])}).save_to_disk(str(tmp_path / "dict"))
    task = task_for(f"task.data_path={tmp_path / 'dict'}")
    assert [p.question for p in task.test] == [r["question"] for r in ROWS[6:]]
    assert len(task.train) == 6 and "[train], row 1" in task.train[0].id


def test_a_directory_of_split_files_and_a_separate_test_file(tmp_path):
    (tmp_path / "d").mkdir()
    write(tmp_path / "d" / "train.csv", ROWS[:7])
    write(tmp_path / "d" / "test.jsonl", ROWS[7:])
    task = task_for(f"task.data_path={tmp_path / 'd'}")
    assert len(task.train) == 7 and [p.answer for p in task.test] == ["14", "16", "18"]
    task = task_for(f"task.data_path={write(tmp_path / 'a.jsonl', ROWS[:4])}",
                    f"task.test_path={write(tmp_path / 'b.parquet', ROWS[4:])}")
    assert len(task.train) == 4 and len(task.test) == 6
    import datasets

    datasets.Dataset.from_list(ROWS[4:7]).save_to_disk(str(tmp_path / "saved-test"))
    task = task_for(f"task.data_path={tmp_path / 'a.jsonl'}", f"task.test_path={tmp_path / 'saved-test'}")
    assert [p.answer for p in task.test] == ["8", "10", "12"]


def test_template_over_any_column_system_prompt_and_answer_field(tmp_path):
    rows = [{"q": "2 + 3", "unit": "pears", "gold": 5}, {"q": "1 + 1", "unit": "figs", "gold": 2}]
    path = write(tmp_path / "p.jsonl", rows)
    task = task_for(f"task.data_path={path}", f"task.test_path={path}", "task.prompt_field=q", "task.answer_field=gold",
                    "task.system_prompt=Be brief.", "task.prompt_template='Count the {unit}: {prompt}'")
    p = task.train[0]
    assert task.messages(p) == [{"role": "system", "content": "Be brief."},
                                {"role": "user", "content": "Count the pears: 2 + 3"}]
    assert p.answer == "5"  # the answer_field column, and what reward functions get as `answer`:
    assert task.score(["it is 5", "it is 2"], [p, p]).total == [1.0, 0.0]


def test_a_messages_column_is_the_chat_as_is(tmp_path):
    chat = [{"role": "system", "content": "You add."}, {"role": "user", "content": "2+2?"}]
    path = write(tmp_path / "c.jsonl", [{"messages": chat, "answer": "4"}] * 3)
    task = task_for(f"task.data_path={path}", f"task.test_path={path}", "task.system_prompt=ignored: the chat has one")
    assert task.messages(task.train[0]) == chat


# -- rewards ----------------------------------------------------------------------------------------------------

USER_MODULE = '''
import re
import sys
import time


def reward_len(completions, **kwargs):  # TRL's documented example, unchanged
    return [-abs(20 - len(completion)) for completion in completions]


def format_reward(completions, **kwargs):  # TRL's conversational example, unchanged
    pattern = r"^<think>.*?</think><answer>.*?</answer>$"
    completion_contents = [completion[0]["content"] for completion in completions]
    matches = [re.match(pattern, content) for content in completion_contents]
    return [1.0 if match else 0.0 for match in matches]


def uses_columns(completions, unit, answer, prompts, completion_ids, truncated):
    return [float(u == "apples" and isinstance(p, str) and len(i) == len(c) and t is False)
            for c, u, p, i, t in zip(completions, unit, prompts, completion_ids, truncated)]


class Contains:
    def __init__(self, word, bonus=1.0):
        self.word, self.bonus = word, bonus

    def __call__(self, completions, **kwargs):
        return [self.bonus * (self.word in c) for c in completions]


def make_exact(strip=True):  # a factory
    def exact(completions, answer, **kwargs):
        return [float((c.strip() if strip else c) == a) for c, a in zip(completions, answer)]
    return exact


def boom(completions, question, **kwargs):
    return [1 / (q != "3 + 3") for q in question]


def short(completions, **kwargs):
    return [1.0] * (len(completions) - 1)


def text(completions, **kwargs):
    return ["yes" for _ in completions]


def nan(completions, **kwargs):
    return [float("nan") for _ in completions]


def sometimes(completions, answer, **kwargs):
    return [None if a == "0" else 1.0 for a in answer]


def slow(completions, **kwargs):
    time.sleep(5)
    return [0.0 for _ in completions]


def exits(completions, question, **kwargs):  # a script's habit: a sweep must record it as this job's failure
    if "3 + 3" in question:
        sys.exit("bye from my reward")
    return [0.0 for _ in completions]
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "user_rewards.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("user_rewards", None)
    return tmp_path


def test_weighted_rewards_with_per_function_values(tmp_path, user_module):
    from rapid_cli.rewards.functions import part_metrics

    fns = ("{_target_: rapid_cli.rewards.numeric_match}, {_target_: user_rewards.Contains, word: apple, weight: 0.5}, "
           "{_target_: user_rewards.make_exact, weight: 2}, {_target_: rapid_cli.rewards.format_match, "
           "pattern: '\\d+', weight: -1, name: bare}")
    task = task_for(f"task.data_path={write(tmp_path / 'p.jsonl')}", functions=fns)
    p = next(q for q in task.train if q.answer == "4")
    s = task.score(["4", "4 apples", "5 apple", " 4 "], [p] * 4)
    assert s.parts == {"numeric_match": [1.0, 1.0, 0.0, 1.0], "Contains": [0.0, 1.0, 1.0, 0.0],
                       "exact": [1.0, 0.0, 0.0, 1.0], "bare": [1.0, 0.0, 0.0, 1.0]}
    assert s.total == [1 + 2 - 1, 1 + 0.5, 0.5, 1 + 2 - 1]
    assert part_metrics(s.parts) == {"reward/numeric_match": 0.75, "reward/Contains": 0.5, "reward/exact": 0.5,
                                     "reward/bare": 0.5}


def test_trl_style_functions_work_unchanged(tmp_path, user_module):
    task = task_for(f"task.data_path={write(tmp_path / 'p.jsonl')}",
                    functions="{_target_: user_rewards.reward_len}, {_target_: user_rewards.uses_columns}, "
                              "{_target_: user_rewards.sometimes, name: skip0}")
    p0 = next(q for q in task.train + task.test if q.answer == "0")
    p2 = next(q for q in task.train + task.test if q.answer == "2")
    s = task.score(["x" * 18, "y" * 25], [p0, p2], completion_ids=[[1] * 18, [1] * 25], finish_reasons=["stop", "stop"])
    assert s.parts == {"reward_len": [-2.0, -5.0], "uses_columns": [1.0, 1.0], "skip0": [None, 1.0]}
    assert s.total == [-2.0 + 1.0, -5.0 + 1.0 + 1.0]  # None: not applicable, adds nothing (TRL's nansum)
    chat = [{"role": "user", "content": "2+2?"}]
    path = write(tmp_path / "c.jsonl", [{"messages": chat, "answer": "4"}] * 2)
    task = task_for(f"task.data_path={path}", functions="{_target_: user_rewards.format_reward}")
    p = task.train[0]
    assert task.score(["<think>2+2</think><answer>4</answer>", "4"], [p, p]).total == [1.0, 0.0]


@pytest.mark.parametrize("pool", ["thread", "process"])
def test_a_pool_gives_the_same_rewards(tmp_path, pool):
    fns = f"{NUMERIC}, {{_target_: rapid_cli.rewards.format_match, pattern: '\\d+', weight: 0.5}}"
    path = write(tmp_path / "p.jsonl")
    plain = task_for(f"task.data_path={path}", functions=fns)
    pooled = task_for(f"task.data_path={path}", f"reward.pool={pool}", "reward.pool_workers=2", functions=fns)
    probs = plain.train * 3
    texts = [f"{i % 7}" if i % 2 else f"the sum is {i % 5}" for i in range(len(probs))]
    assert pooled.score(texts, probs).total == plain.score(texts, probs).total


def test_builtin_functions_are_importable_by_name():
    import importlib

    rewards = importlib.import_module("rapid_cli.rewards")
    for name in ("numeric_match", "math_equivalent", "format_match", "overlong_penalty"):
        assert callable(getattr(rewards, name)), name
    assert callable(importlib.import_module("rapid_cli.tasks").code_tests)  # beside the code tasks' verdict
    assert rewards.math_equivalent(["so \\boxed{\\frac{2}{4}}", "\\boxed{1/3}"], answer=["0.5", "0.5"]) == [1.0, 0.0]
    assert rewards.format_match(["<think>a</think>\n<answer>1</answer>", "<answer>1</answer>"]) == [1.0, 0.0]
    assert rewards.overlong_penalty(["a", "b"], completion_ids=[[0] * 3, [0] * 8],
                                    truncated=[False, True]) == [0.0, -1.0]


def test_code_tests_runs_the_code_in_the_sandbox(tmp_path):
    rows = [{"prompt": "Write add(a, b).", "tests": ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"],
             "solution": "def add(a, b):\n    return a + b\n"}] * 2
    cfg = compose(["task=custom", f"task.data_path={write(tmp_path / 'c.jsonl', rows)}",
                   f"cache_dir={tmp_path / 'cache'}", "reward.functions=[{_target_: rapid_cli.tasks.code_tests}]"])
    task = make_task(cfg.task, seed=0, reward_cfg=cfg.reward)
    p = task.train[0]
    good = "```python\ndef add(a, b):\n    return b + a\n```"
    wrong = "```python\ndef add(a, b):\n    return a - b\n```"
    # prints what it should return
    sneaky = "```python\nimport sys\ndef add(a, b):\n    print('[3, 0]'); sys.exit(0)\n```"
    assert task.score([good, wrong, sneaky], [p] * 3).total == [1.0, 0.0, 0.0]


# -- errors: one line naming the file, row and column (or the function and row) ------------------------------------

@pytest.mark.parametrize("case", ["missing_prompt", "missing_answer", "template_column", "empty", "bad_json",
                                  "not_object", "csv_width", "bad_messages", "no_file", "not_utf8", "not_utf8_gz"])
def test_bad_data_stops_with_one_line(tmp_path, case):
    path = tmp_path / "bad.jsonl"
    rows, extra, expect = list(ROWS), [], []
    if case == "missing_prompt":
        rows[3] = {"answer": "1"}
        expect = ["bad.jsonl, line 4", "'question'"]
    elif case == "missing_answer":
        rows[5] = {"question": "1 + 1"}
        expect = ["bad.jsonl, line 6", "'answer'", "numeric_match", "task.answer_field"]
    elif case == "template_column":
        rows[2] = {"question": "1 + 1", "answer": "2"}
        extra, expect = (["task.prompt_template='{prompt} in {unit}'"],
                         ["bad.jsonl, line 3", "'unit'", "prompt_template"])
    elif case == "bad_messages":
        rows[1] = {"messages": [{"role": "user"}], "answer": "2"}
        expect = ["bad.jsonl, line 2", "'messages'"]
    if case == "empty":
        path.write_text("\n")
        expect = ["bad.jsonl has no records"]
    elif case == "bad_json":
        path.write_text(json.dumps(ROWS[0]) + "\n{not json\n")
        expect = ["bad.jsonl, line 2", "not valid JSON"]
    elif case == "not_object":
        path.write_text(json.dumps(ROWS[0]) + "\n[1, 2]\n")
        expect = ["bad.jsonl, line 2", "expected a JSON object"]
    elif case == "csv_width":
        path = tmp_path / "bad.csv"
        path.write_text("question,answer\n1 + 1,2\n2 + 2,4,extra\n")
        expect = ["bad.csv, line 3", "3 fields where the header has 2"]
    elif case == "no_file":
        path = tmp_path / "nope.jsonl"
        expect = ["nope.jsonl does not exist"]
    elif case == "not_utf8":  # an Excel CSV saved as Windows-1252: a UnicodeDecodeError traceback before
        path = tmp_path / "bad.csv"
        path.write_bytes(b"question,answer\n1 + 1,2\n" + "caf\xe9 + 1,3\n".encode("cp1252"))
        expect = ["bad.csv, line 3", "byte 0xe9 is not UTF-8", "iconv -f cp1252"]
    elif case == "not_utf8_gz":
        path = tmp_path / "bad.jsonl.gz"
        path.write_bytes(gzip.compress(json.dumps(ROWS[0]).encode() + b'\n{"question": "\xff"}\n'))
        expect = ["bad.jsonl.gz, line 2", "byte 0xff is not UTF-8"]
    elif case not in ("empty",):
        write(path, rows)
    with pytest.raises(RapidError) as err:
        task_for(f"task.data_path={path}", *extra).splits()
    line = one_line(err)
    for part in expect:
        assert part in line, line


def test_a_bom_is_no_column_name(tmp_path):
    """Excel's "CSV UTF-8" starts with a byte-order mark, which was read as part of the first column's name."""
    path = tmp_path / "p.csv"
    path.write_bytes(b"\xef\xbb\xbfquestion,answer\n" + "".join(f"{a} + {a},{2 * a}\n" for a in range(4)).encode())
    task = task_for(f"task.data_path={path}")
    assert sorted(p.question for p in task.train + task.test) == ["0 + 0", "1 + 1", "2 + 2", "3 + 3"]


def test_a_prompt_longer_than_the_context_is_named_and_max_prompt_tokens_drops_it(tmp_path, tiny_policy, capsys):
    """A 2 MB prompt row got "lower sampler.max_tokens to at most 1", naming neither file nor row; it was found
    only if it was among the first 256 rows. task.max_prompt_tokens leaves such rows out, with a count."""
    from rapid_cli.policy import check_fits

    model, tok = tiny_policy
    rows = [{"question": f"{a} + {a}", "answer": str(2 * a)} for a in range(400)]
    rows[300] = {"question": "1 + 1 = 2. " * 2000, "answer": "2"}  # past the first 256 rows of either split
    data = write(tmp_path / "p.jsonl", rows)
    task = task_for(f"task.data_path={data}", "task.test_fraction=0.1")
    longest = task.longest_prompt(tok)
    assert longest > 4096 and longest.where == f"{data}, line 301"
    with pytest.raises(RapidError) as err:
        check_fits(model, 64, longest, "sampler.max_tokens")
    line = one_line(err)
    assert f"the prompt of {data}, line 301 is {int(longest)} tokens" in line and "context of 4096" in line
    assert "task.max_prompt_tokens=4032" in line and "at most 1" not in line

    task = task_for(f"task.data_path={data}", "task.test_fraction=0.1", "task.max_prompt_tokens=64")
    sizes = len(task.train), len(task.test)
    check_fits(model, 64, task.longest_prompt(tok), "sampler.max_tokens")  # fits now
    assert len(task.train) + len(task.test) == sum(sizes) - 1
    assert all(p.id != f"{data}, line 301" for p in task.train + task.test)
    out = " ".join(capsys.readouterr().out.split())
    assert "task.max_prompt_tokens=64: left out" in out and f"(the longest: {data}, line 301," in out
    from rapid_cli.tasks import check

    with pytest.raises(RapidError, match="task.max_prompt_tokens=0 must be at least 1"):
        check(compose(["task=custom", "task.max_prompt_tokens=0"]).task)


@pytest.mark.parametrize("fn,expect", [
    ("boom", ["reward function boom raised ZeroDivisionError", "p.jsonl, line 4"]),
    ("short", ["reward function short returned 3 values for 4 completions"]),
    ("text", ["reward function text returned 'yes' for", "p.jsonl, line"]),
    ("nan", ["reward function nan returned nan for", "finite number"]),
    ("slow", ["reward function slow took more than 0.3 s", "timeout_s"]),
    ("exits", ["reward function exits called sys.exit('bye from my reward')", "p.jsonl, line 4"]),
])
def test_a_bad_reward_function_stops_with_one_line(tmp_path, user_module, fn, expect):
    task = task_for(f"task.data_path={write(tmp_path / 'p.jsonl')}", "task.test_fraction=0.1",
                    functions=f"{{_target_: user_rewards.{fn}, timeout_s: 0.3}}")
    # lines 1..4; line 4 holds "3 + 3"
    problems = sorted(task.train + task.test, key=lambda p: int(p.id.rsplit(" ", 1)[1]))[:4]
    start = time.monotonic()
    with pytest.raises(RapidError) as err:
        task.score(["1"] * 4, problems)
    assert time.monotonic() - start < 4  # the slow one does not hold the run for its 5 s
    line = one_line(err)
    for part in expect:
        assert part in line, line


@pytest.mark.parametrize("functions,expect", [
    ("{weight: 1}", "reward.functions[0] needs a _target_"),
    ("{_target_: no_such_module.fn}", "reward.functions[0]: cannot import 'no_such_module.fn'"),
    ("{_target_: user_rewards.Contains, colour: red}",
     "reward.functions[0]: building user_rewards.Contains(colour) failed"),
    (f"{NUMERIC}, {{_target_: user_rewards.reward_len, weight: heavy}}", "reward.functions[1]: weight='heavy'"),
])
def test_bad_function_entries_stop_with_one_line(tmp_path, user_module, functions, expect):
    with pytest.raises(RapidError) as err:
        task_for(f"task.data_path={write(tmp_path / 'p.jsonl')}", functions=functions)
    assert expect in one_line(err)


@pytest.mark.parametrize("module,target,expect", [
    ("def ok(completions, **kw):\n    return [1.0] * len(completions)\ndef bad(completions\n", "my_rewards.ok",
     "reward.functions[0]: syntax error at my_rewards.py:3 ('(' was never closed)"),
    ("def boom(completions, **kw):\n    return [0.0] * len(completions)\n", "my_rewards.boomm",
     "reward.functions[0]: my_rewards has no function boomm; did you mean my_rewards.boom?"),
    ("import no_such_dependency\n", "my_rewards.ok",
     "reward.functions[0]: importing my_rewards failed: No module named 'no_such_dependency'"),
    ("import os\n\nraise RuntimeError('needs an API key')\n", "my_rewards.ok",
     "reward.functions[0]: importing my_rewards raised RuntimeError at my_rewards.py:3: needs an API key"),
    ("", "rapid_cli.rewards.numric_match",
     "reward.functions[0]: rapid_cli.rewards has no function numric_match; did you mean "
     "rapid_cli.rewards.numeric_match?"),
], ids=["syntax_error", "misspelt", "missing_dependency", "raises_on_import", "misspelt_builtin"])
def test_a_broken_reward_module_says_exactly_what_is_wrong_in_one_line(tmp_path, module, target, expect):
    """A syntax error or a misspelt function got four lines of Hydra's log and "put its module on PYTHONPATH"."""
    (tmp_path / "my_rewards.py").write_text(module)
    data = write(tmp_path / "p.jsonl")
    proc = subprocess.run([RAPID, "train", *TINY, "task=custom", f"task.data_path={data}", "task.prompt_field=question",
                           f"reward.functions=[{{_target_: {target}}}]", f"hydra.run.dir={tmp_path / 'run'}"],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path,
                          env={**os.environ, "WANDB_MODE": "disabled"})
    out = (proc.stdout + proc.stderr).strip()
    assert proc.returncode == 2 and out == f"error: {expect}", out


def test_a_function_that_returns_only_none_is_warned_once_then_stops_the_run(tmp_path, user_module, capsys):
    """TRL warns when a reward function returns None for every row; rapid trained on nothing without a word."""
    (user_module / "none_rewards.py").write_text("def never(completions, **kw):\n"
                                                 "    return [None] * len(completions)\n")
    sys.modules.pop("none_rewards", None)
    task = task_for(f"task.data_path={write(tmp_path / 'p.jsonl')}", "reward.max_none_rounds=3",
                    functions="{_target_: none_rewards.never}")
    problems = task.train[:4]
    with task.evaluating():  # an evaluation's batches are no training rounds
        for _ in range(5):
            task.score(["1"] * 4, problems)
    assert "returned None" not in capsys.readouterr().out
    for _ in range(2):
        assert task.score(["1"] * 4, problems).total == [0, 0, 0, 0]
    out = " ".join(capsys.readouterr().out.split())
    assert out.count("reward function never returned None (not applicable) for all 4 completions of this round, the "
                     "only function: every reward is 0 and the round trains on nothing; 3 such rounds in a row stop "
                     "the run (reward.max_none_rounds)") == 1, out
    with pytest.raises(RapidError) as err:
        task.score(["1"] * 4, problems)
    assert "reward function never returned None (not applicable) for every completion in 3 training rounds in a " \
           "row" in one_line(err)
    # a round with a value starts the count again; reward.max_none_rounds=null never stops
    task = task_for(f"task.data_path={write(tmp_path / 'p.jsonl')}", "reward.max_none_rounds=null",
                    functions="{_target_: none_rewards.never}, {_target_: user_rewards.sometimes}")
    for _ in range(5):
        task.score(["1"] * 4, problems)
    assert "reward function never returned None" in capsys.readouterr().out
    from rapid_cli.validation import validate

    with pytest.raises(RapidError, match="reward.max_none_rounds=0 must be at least 1"):
        validate(compose(["reward.max_none_rounds=0"]))


def test_weights_that_cannot_reach_the_pass_threshold_are_one_line_at_start(tmp_path, capsys):
    """Weights 0.5 + 0.3 against task.pass_threshold=1.0 reported pass@1 0.000 forever, unsaid."""
    fns = ("{_target_: rapid_cli.rewards.numeric_match, weight: 0.5}, {_target_: rapid_cli.rewards.format_match, "
           "pattern: '\\d+', weight: 0.3}")
    task_for(f"task.data_path={write(tmp_path / 'p.jsonl')}", functions=fns)
    out = " ".join(capsys.readouterr().out.split())
    assert ("task.pass_threshold=1 is more than the reward functions' weights add up to (0.5 + 0.3 = 0.8, if each "
            "scores at most 1)") in out and "task.pass_threshold=0.8 or lower" in out
    task_for(f"task.data_path={write(tmp_path / 'p.jsonl')}", "task.pass_threshold=0.8", functions=fns)
    assert "pass_threshold" not in capsys.readouterr().out


def test_no_functions_or_no_data_is_refused(tmp_path):
    cfg = compose(["task=gsm8k", f"reward.functions=[{NUMERIC}]"])
    with pytest.raises(RapidError, match="reward.functions is for task=custom; task=gsm8k scores with its own rule"):
        make_task(cfg.task, seed=0, reward_cfg=cfg.reward)
    with pytest.raises(RapidError, match="needs reward functions"):
        make_task(compose(["task=custom", f"task.data_path={write(tmp_path / 'p.jsonl')}"]).task, seed=0,
                  reward_cfg=compose(["task=custom"]).reward)
    with pytest.raises(RapidError, match="task.data_path=<file or directory> or task.hub_id"):
        task_for().splits()


# -- eval and the CLI ----------------------------------------------------------------------------------------------

def test_eval_counts_a_sample_correct_at_the_threshold(tmp_path, user_module, tiny_policy):
    from rapid_cli.evaluate import evaluate
    from rapid_cli.samplers.hf import HFSampler
    from rapid_cli.types import SamplingParams

    model, tok = tiny_policy
    fns = "{_target_: user_rewards.Contains, word: '', bonus: 0.5}"  # 0.5 for every completion
    for threshold, passed in ((0.5, 1.0), (0.6, 0.0)):
        task = task_for(f"task.data_path={write(tmp_path / 'p.jsonl')}", f"task.pass_threshold={threshold}",
                        functions=fns)
        prompts = [task.prompt_ids(p, tok) for p in task.test]
        m = evaluate(task, task.test, prompts, HFSampler(model, tok), SamplingParams(n=2, max_tokens=4), [1, 2])
        assert m["eval/reward_mean"] == 0.5 and m["eval/pass@1"] == passed and m["eval/pass@2"] == passed


def _rapid(*args, **env):
    """`rapid` with `env`; a PYTHONPATH given goes before the one already set (which may hold rapid's own)."""
    if "PYTHONPATH" in env and os.environ.get("PYTHONPATH"):
        env["PYTHONPATH"] += os.pathsep + os.environ["PYTHONPATH"]
    return subprocess.run([RAPID, *args], capture_output=True, text=True, timeout=600, cwd=REPO,
                          env={**os.environ, "WANDB_MODE": "disabled", **env})


@pytest.mark.slow
def test_rapid_eval_on_a_custom_hub_data_set(tmp_path, user_module):
    """The hub path, offline: the `datasets` cache a user has after a first load (tests/hubcache.py)."""
    from hubcache import _write_dataset

    home = tmp_path / "hf"
    _write_dataset(home / "datasets", "someone/sums", None, {"train": ROWS[:6], "test": ROWS[6:]})
    proc = _rapid("eval", "model=tiny", "sampler=hf", "task=custom", "task.hub_id=someone/sums",
                  "task.hub_test_split=test", "task.prompt_field=question",
                  "reward.functions=[{_target_: user_rewards.Contains, word: '', bonus: 0.5}]",
                  "task.pass_threshold=0.5", "eval.n=2", "eval.k=[1,2]", "sampler.max_tokens=4",
                  f"hydra.run.dir={tmp_path / 'run'}", HF_HOME=str(home), HF_HUB_OFFLINE="1",
                  PYTHONPATH=str(user_module))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert report["problems"] == 4 and report["metrics"]["eval/pass@2"] == 1.0
    assert [p["id"] for p in report["per_problem"]][0] == "someone/sums[test], row 1"


def example_command() -> list[str]:
    """The training command of examples/times-table/README.md, as argv after `rapid`."""
    readme = (REPO / "examples" / "times-table" / "README.md").read_text()
    block = readme.split("```bash\n", 1)[1].split("```", 1)[0]
    lines = " ".join(line.rstrip("\\") for line in block.splitlines() if not line.startswith("python"))
    argv = shlex.split(lines)
    env = [a for a in argv if "=" in a and a.split("=")[0].isupper()]
    assert argv[len(env)] == "rapid", argv
    return env, argv[len(env) + 1 :]


@pytest.mark.slow
def test_the_example_command_trains_the_tiny_model(tmp_path):
    """The README's exact command with a tiny budget (model, sampler and sizes overridden after it)."""
    gen = subprocess.run([sys.executable, "examples/times-table/make_data.py", "--out",
                          str(tmp_path / "problems.jsonl")],
                         cwd=REPO, capture_output=True, text=True)
    assert gen.returncode == 0 and len((tmp_path / "problems.jsonl").read_text().splitlines()) == 200
    env, argv = example_command()
    argv = [a.replace("examples/times-table/problems.jsonl", str(tmp_path / "problems.jsonl")) for a in argv]
    tiny = [o for o in TINY if not o.startswith("task=")] + ["eval.n=2", "eval.k=[1,2]", "eval.temperature=1.0",
                                                             "train.save_every=1", f"hydra.run.dir={tmp_path / 'run'}"]
    proc = _rapid(*argv, *tiny, **{k: str(REPO / v) for k, v in (e.split("=", 1) for e in env)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    last = records[-1]
    assert last["round"] == 2 and "eval/pass@2" in last
    for key in ("reward/numeric_match", "reward/just_the_number"):
        assert 0.0 <= last[key] <= 1.0, key
    assert last["reward/mean"] == pytest.approx(last["reward/numeric_match"] + 0.25 * last["reward/just_the_number"])


@pytest.mark.slow
def test_a_failing_reward_function_keeps_the_last_checkpoint(tmp_path):
    """Round 2's reward function raises: one line naming it and the row; round 1's checkpoint is intact."""
    (tmp_path / "late.py").write_text(textwrap.dedent('''
        class FailsInRound2:
            def __init__(self):
                self.calls = 0

            def __call__(self, completions, **kwargs):
                self.calls += 1
                if self.calls == 2:
                    raise ValueError("cannot score this")
                return [float(len(c) % 2) for c in completions]
    '''))
    overrides = [o for o in TINY if not o.startswith("task=")] + [
        "task=custom", f"task.data_path={write(tmp_path / 'p.jsonl')}", "task.prompt_field=question",
        "reward.functions=[{_target_: late.FailsInRound2}]", "eval.at_start=false", "train.rounds=3",
        "train.save_every=1", f"hydra.run.dir={tmp_path / 'run'}"]
    proc = _rapid("train", *overrides, PYTHONPATH=str(tmp_path))
    out = proc.stdout + proc.stderr
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert proc.returncode != 0 and "Traceback" not in out and len(errors) == 1, out
    assert "reward function FailsInRound2 raised ValueError: cannot score this on" in errors[0], errors[0]
    assert "p.jsonl, line" in errors[0], errors[0]
    from rapid_cli import checkpoint

    saved = checkpoint.checkpoints(tmp_path / "run" / "checkpoints")
    assert [p.name for p in saved] == ["round-000001"]
    assert checkpoint.load_state(saved[0])["cursor"] == 4  # round 1's 2 x 2 prompts


def test_the_eval_hint_composes_back_to_the_same_task(tmp_path):
    """The `try it: rapid eval ...` line a run ends with names the same data, cut and reward functions."""
    fns = (f"{NUMERIC}, {{_target_: rapid_cli.rewards.format_match, pattern: '<a>\\d+ it\\'s</a>', weight: 0.5}}")
    task = task_for(f"task.data_path={write(tmp_path / 'p.jsonl')}", "task.test_fraction=0.3",
                    "task.prompt_template='Q: {prompt}?'", functions=fns)
    again = compose(shlex.split(task.cli_args()))
    assert again.reward.functions == task.reward_cfg.functions
    for key in ("data_path", "test_fraction", "prompt_template", "prompt_field"):
        assert again.task[key] == task.cfg[key], key


def test_a_round_that_max_prompt_tokens_leaves_too_few_problems_for_stops_before_training(tmp_path):
    """validate_data counted the problems before task.max_prompt_tokens dropped the long ones, so a round could
    need more prompts than were left."""
    from rapid_cli.trainer import train

    rows = [{"question": f"{a} + {a}", "answer": str(2 * a)} for a in range(3)]
    rows += [{"question": "1 + 1 = 2. " * 50 + f"{a} + 1", "answer": str(a + 1)} for a in range(40)]
    data = write(tmp_path / "p.jsonl", rows)
    test = write(tmp_path / "t.jsonl", rows[:2])
    cfg = compose(TINY + ["task=custom", f"task.data_path={data}", f"task.test_path={test}",
                          "task.prompt_field=question", "task.max_prompt_tokens=64", "algo.prompts_per_step=4",
                          "train.rounds=1",
                          "reward.functions=[{_target_: rapid_cli.rewards.numeric_match}]"])
    with pytest.raises(RapidError, match=r"^a round needs .* = 8 prompts but task custom has only 3 training problems"):
        train(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
