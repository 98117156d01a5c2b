"""Tasks: where problems come from, how they become prompts, and how completions are scored.

A task module defines a `Task` subclass and registers it in TASKS. `make_task(cfg.task, seed)` builds it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rapid_cli.errors import RapidError
from rapid_cli.tasks.arith import ArithTask
from rapid_cli.tasks.base import Task
from rapid_cli.tasks.code import code_tests
from rapid_cli.tasks.custom import CustomTask
from rapid_cli.tasks.gsm8k import GSM8KTask
from rapid_cli.tasks.humaneval import HumanEvalTask
from rapid_cli.tasks.math import MathTask
from rapid_cli.tasks.mbpp import MBPPTask

if TYPE_CHECKING:
    from rapid_cli.config import RewardConfig, TaskConfig

TASKS: dict[str, type[Task]] = {"arith": ArithTask, "gsm8k": GSM8KTask, "math": MathTask, "mbpp": MBPPTask,
                                "humaneval": HumanEvalTask, "custom": CustomTask}


def check(task_cfg: TaskConfig) -> None:
    """The task name is one registered here (a choice that grows with the registry, so not an Enum); a
    task.max_prompt_tokens, if set, is positive."""
    if task_cfg.name not in TASKS:
        raise RapidError(f"task.name={task_cfg.name!r} is unknown; choose one of {', '.join(sorted(TASKS))}")
    limit = task_cfg.get("max_prompt_tokens")
    if limit is not None and limit < 1:
        raise RapidError(f"task.max_prompt_tokens={limit} must be at least 1 (null: keep every prompt)")


def make_task(task_cfg: TaskConfig, seed: int = 0, cache_dir: str | None = None,
              reward_cfg: RewardConfig | None = None) -> Task:
    if reward_cfg is not None and reward_cfg.functions and task_cfg.name != "custom":
        # a built-in task scores with its own rule; silently ignoring the user's functions would mislead
        raise RapidError(f"reward.functions is for task=custom; task={task_cfg.name} scores with its own rule (the "
                         "same as rapid_cli.rewards.numeric_match / math_equivalent, rapid_cli.tasks.code_tests): use "
                         "task=custom with task.data_path= to combine rewards")
    return TASKS[task_cfg.name](task_cfg, seed=seed, cache_dir=cache_dir, reward_cfg=reward_cfg)


__all__ = ["TASKS", "Task", "check", "code_tests", "make_task"]
