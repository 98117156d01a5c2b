"""GSM8K and MATH answers: gold answers score 1, wrong ones 0, equivalent forms are recognised."""

from __future__ import annotations

import pytest

from conftest import compose
from rapid_cli.evaluate import EvalResult, pass_at_k, pass_at_k_metrics
from rapid_cli.rewards.math_answers import boxed_reward, math_equal
from rapid_cli.tasks import make_task


def task(name: str):
    cfg = compose([f"task={name}"])
    return make_task(cfg.task, reward_cfg=cfg.reward)


def test_all_gsm8k_test_answers_score_one():
    gsm = task("gsm8k")
    problems = gsm.test
    assert len(problems) == 1319
    assert gsm.rewards([p.meta["solution"] for p in problems], problems) == [1.0] * 1319
    assert sum(gsm.rewards([f"#### {int(float(p.answer)) + 1}" for p in problems], problems)) == 0


def test_math500_boxed_answers_score_one_and_wrong_ones_zero():
    math = task("math")
    assert len(math.train) >= 7490 and len(math.test) == 500
    problems = math.test
    gold = math.rewards([f"The answer is $\\boxed{{{p.answer}}}$." for p in problems], problems)
    assert sum(gold) / len(gold) >= 0.99
    assert sum(math.rewards([f"so the answer is {p.answer}" for p in problems[:50]], problems[:50])) == 0  # no box
    assert math.rewards(["\\boxed{12345.678}"] * 20, problems[:20]) == [0.0] * 20


@pytest.mark.parametrize("pred, gold", [
    ("\\frac{1}{2}", "0.5"), ("\\dfrac{3}{4}", "\\frac34"), ("2\\sqrt{2}", "\\sqrt{8}"), ("x^2+2x+1", "(x+1)^2"),
    ("(1, 2)", "(1,2)"), ("\\{1,2\\}", "\\{2,1\\}"), ("1000", "1,000"),
])
def test_equivalent_forms_match(pred, gold):
    assert math_equal(pred, gold)


@pytest.mark.parametrize("pred, gold", [("\\frac{1}{3}", "0.33"), ("x^2", "x^3"), ("(1,2)", "(2,1)"), ("5", "-5")])
def test_different_answers_do_not_match(pred, gold):
    assert not math_equal(pred, gold)


def test_only_the_last_box_counts():
    assert boxed_reward("first \\boxed{3}, corrected: \\boxed{4}", "4") == 1.0
    assert boxed_reward("first \\boxed{4}, corrected: \\boxed{3}", "4") == 0.0


def test_pass_at_k_matches_hand_computed_values():
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)  # 1 - C(3,2)/C(5,2)
    assert pass_at_k(10, 3, 5) == pytest.approx(1 - 21 / 252)  # 1 - C(7,5)/C(10,5)
    assert pass_at_k(8, 0, 8) == 0.0 and pass_at_k(8, 1, 8) == 1.0
    assert pass_at_k(3, 1, 1) == pytest.approx(1 / 3)
    result = EvalResult(texts=[""] * 15, rewards=[0.0] * 15, correct=[0, 2, 5], completion_tokens=30)
    m = pass_at_k_metrics(result, n=5, ks=[1, 2])
    assert m["eval/pass@1"] == pytest.approx((0 + 0.4 + 1) / 3)
    assert m["eval/pass@2"] == pytest.approx((0 + 0.7 + 1) / 3)


def test_pass_at_k_comes_with_its_standard_error_over_the_problems():
    """A pass@1 of 0.015 on 200 problems means little without its noise: the standard error of the mean of the
    per-problem estimates (samples of one problem are not independent draws, so not the binomial one over all
    samples), zero-width only where every problem scored alike."""
    import statistics

    result = EvalResult(texts=[""] * 15, rewards=[0.0] * 15, correct=[0, 2, 5], completion_tokens=30)
    m = pass_at_k_metrics(result, n=5, ks=[1, 2])
    assert m["eval/pass@1_se"] == pytest.approx(statistics.stdev([0, 0.4, 1]) / 3 ** 0.5)
    assert m["eval/pass@2_se"] == pytest.approx(statistics.stdev([0, 0.7, 1]) / 3 ** 0.5)
    alike = pass_at_k_metrics(EvalResult([""] * 6, [0.0] * 6, [1, 1, 1], 6), n=2, ks=[1])
    assert alike["eval/pass@1"] == 0.5 and alike["eval/pass@1_se"] == 0.0
    assert pass_at_k_metrics(EvalResult([""] * 2, [0.0] * 2, [1], 2), n=2, ks=[1])["eval/pass@1_se"] == 0.0
