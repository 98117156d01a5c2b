"""GSM8K's reward reads the final answer as lm-eval's GSM8K scorers do (rewards/gsm8k_answers.py, docs/tasks.md).

Every completion here is hand-written, and every case failed under the previous rule (the last \\boxed{}, else
the rest of the LAST `####` line as a bare number, else the last number anywhere, cut off or not)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from conftest import compose
from rapid_cli.evaluate import pass_at_k_metrics, sample_and_score
from rapid_cli.rewards import gsm8k_match
from rapid_cli.tasks import make_task
from rapid_cli.types import Problem, SamplingParams


def gsm8k():
    return make_task(compose(["task=gsm8k"]).task)  # the data loads lazily: score() needs none


def scored(completion: str, answer: str, finish_reason: str = "stop") -> float:
    problem = Problem(id="p", question="q", answer=answer)
    return gsm8k().score([completion], [problem], None, [finish_reason]).total[0]


FINISHED = [
    # units and currency after `####` (lm-eval's strict regex reads the number; the old rule wanted a bare one)
    ("9 * 2 = 18\n#### 18 dollars", "18"),
    ("She earns 1234.5 a year.\n#### $1,234.50 per year", "1234.5"),
    ("#### 18.00 dollars", "18"),
    # a `####` quoted from the prompt is skipped, not fatal
    ('I will write the answer after "####" as asked. 16 - 3 - 4 = 9 and 9 * 2 = 18', "18"),
    ('The final answer goes after "####". The answer is 18.00.', "18"),
    # "the answer is N" is read, and beats a later number
    ("The answer is 18. Check: 18 - 3 = 15.", "18"),
    ("So the final answer is $1,234.50. That is 3 more than 1231.5", "1234.5"),
    ("Answer: **18**\n\nI used 2 steps.", "18"),
    # an answer statement that is a calculation states its result
    ("the answer is 3 * 6 = 18 bolts, with 2 left over", "18"),
    # the FIRST `#### N` decides (lm-eval strict-match); the old rule took the last
    ("16 - 3 - 4 = 9, 9 * 2 = 18\n#### 18\nCheck: the next problem\n#### 20", "18"),
    # a boxed number with its unit
    ("so she makes \\boxed{18 \\text{ dollars}} a day, 2 more than 16", "18"),
]


@pytest.mark.parametrize("completion,answer", FINISHED)
def test_finished_completions_earn_their_stated_answer(completion, answer):
    assert scored(completion, answer) == 1.0


def test_a_time_is_not_a_number():
    assert scored("It takes 2:45", "45") == 0.0  # not 45 (nor 2)


def test_a_number_that_merely_appears_in_a_cut_off_completion_earns_nothing():
    text = "She lays 16 eggs, eats 3 and bakes 4, so 16 - 7 = 9 are sold, and 9 * 2 = 18"
    assert scored(text, "18", "stop") == 1.0  # it ended by itself: the last number is its answer
    assert scored(text, "18", "length") == 0.0  # cut off at max_tokens: no answer was given


@pytest.mark.parametrize("completion", [
    "So the answer is 18. Now let me check it another way: 18 - 3 = 15 and",
    "#### 18 dollars\nThe next question is about 7 and",
    "\\boxed{18 \\text{ dollars}}, and to double-check we add 5 and",
    "Therefore, the answer is 3 * 6 = 18 total bolts of blue fiber and 2",
])
def test_an_explicit_answer_in_a_cut_off_completion_counts(completion):
    assert scored(completion, "18", "length") == 1.0


def test_without_finish_reasons_every_completion_counts_as_finished():  # (as before: a fallback, not a rule)
    problem = Problem(id="p", question="q", answer="18")
    assert gsm8k().score(["so 9 * 2 = 18 but"], [problem]).total == [1.0]


def test_gsm8k_match_is_the_same_rule_for_task_custom():
    texts = ["#### 18 dollars", "so 9 * 2 = 18", "so 9 * 2 = 18", "The answer is 18. Check: 18 - 3 = 15 and"]
    assert gsm8k_match(texts, answer=["18", "18", 18, "18"], truncated=[True, False, True, True]) == [1.0, 1.0, 0.0,
                                                                                                         1.0]


def test_eval_pass_at_k_uses_the_finish_reasons():
    """`rapid eval` (sample_and_score) hands the sampler's finish reasons to task.score: a cut-off completion
    whose last number happens to be right is no pass."""
    problems = [Problem(id=f"p{i}", question="q", answer="18") for i in range(2)]
    texts = ["9 * 2 = 18", "#### 17", "9 * 2 = 18 and then", "9 * 2 = 18 and then"]

    class Sampler:
        def generate(self, prompts, params):
            return SimpleNamespace(texts=texts, completion_ids=[[1]] * 4, finish_reasons=["stop", "stop", "length",
                                                                                           "length"], num_tokens=4)

    params = SamplingParams(n=2, temperature=1.0, max_tokens=8, seed=0)
    result = sample_and_score(gsm8k(), problems, [[0], [0]], Sampler(), params)
    assert result.rewards == [1.0, 0.0, 0.0, 0.0] and result.correct == [1, 0]
    assert result.finish_reasons == ["stop", "stop", "length", "length"]  # samples.jsonl records them
    metrics = pass_at_k_metrics(result, 2, [1, 2])
    assert metrics["eval/pass@1"] == 0.25 and metrics["eval/pass@2"] == 0.5


def test_task_custom_with_gsm8k_match_scores_as_task_gsm8k(tmp_path):
    import json

    data = tmp_path / "word.jsonl"
    data.write_text("".join(json.dumps({"question": f"q{i}", "answer": "18"}) + "\n" for i in range(10)))
    cfg = compose(["task=custom", "task.prompt_field=question", f"task.data_path={data}",
                   "reward.functions=[{_target_: rapid_cli.rewards.gsm8k_match}]"])
    custom = make_task(cfg.task, seed=0, reward_cfg=cfg.reward)
    texts = ["#### 18 dollars", "so 9 * 2 = 18", "so 9 * 2 = 18", "The answer is 18. Check: 18 - 3 = 15 and"]
    reasons = ["stop", "stop", "length", "length"]
    problems = [custom.train[0]] * 4
    gsm = [Problem(id="p", question="q", answer="18")] * 4
    assert custom.score(texts, problems, [[1]] * 4, reasons).total == gsm8k().score(texts, gsm, None, reasons).total \
        == [1.0, 1.0, 0.0, 1.0]


def test_xcheck_agreement_with_lm_eval_on_the_committed_completions_holds():
    """docs/tasks.md's cross-check, kept: on the 800 committed GSM8K completions rapid's rule agrees with
    lm-eval's regexes chained with the cut-off rule on 796, and the 4 differences are the ones it explains (a
    change to the rule that moves any verdict there fails here). Needs `rapid prepare`'s cache (the GSM8K
    copy and the offline model's tokenizer), which `make install` fills."""
    import re
    import subprocess
    import sys

    from conftest import REPO

    files = sorted((REPO / "docs/results/gsm8k/base").glob("*/samples.jsonl"))
    assert len(files) == 2
    out = subprocess.run([sys.executable, str(REPO / "scripts/xcheck.py"), *map(str, files), "--show", "20"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "800 completions; rapid rewards 10 (435 cut off at max_tokens)" in out.stdout
    row = re.search(r"^lm-eval chain\+cut +(\d+) +(\d+) ", out.stdout, re.M)
    assert row and row.groups() == ("8", "796"), out.stdout[-3000:]
    section = out.stdout.split("== rapid vs lm-eval chain+cut: 4 disagreements\n")[1].split("\n== ")[0]
    found = sorted(re.findall(r"^- \d_experiment=paper-gsm8k,seed=(\d) (test-\d+) #(\d+): .*?rapid (\d)", section,
                              re.M))
    assert found == [("0", "test-18", "7", "0"), ("0", "test-44", "4", "1"), ("1", "test-28", "6", "1"),
                     ("1", "test-48", "3", "1")]
