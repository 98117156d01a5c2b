"""What every task shares: loading once, prompt rendering, scoring a batch."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from rapid_cli.errors import RapidError
from rapid_cli.types import Problem, Scores

if TYPE_CHECKING:
    from rapid_cli.config import RewardConfig, TaskConfig


class PromptLength(int):
    """A prompt's length in tokens that also says whose it is (`where`: the problem's id, which for task=custom
    is its file and row), so a prompt too long for the context can be named."""

    where: str = ""

    def __new__(cls, tokens: int, where: str = ""):
        length = super().__new__(cls, tokens)
        length.where = where
        return length


class Task:
    name = "base"

    def __init__(self, cfg: TaskConfig, seed: int = 0, cache_dir: str | None = None,
                 reward_cfg: RewardConfig | None = None):
        self.cfg = cfg
        if reward_cfg is None:
            from rapid_cli.config import RewardConfig

            reward_cfg = RewardConfig()
        self.reward_cfg = reward_cfg
        self.seed = seed
        self.cache_dir = cache_dir
        self._splits: tuple[list[Problem], list[Problem]] | None = None
        self._prompts_fitted = False
        self._evaluating = False

    # -- what a task implements: `load`, or `_split` for tasks with train/test files -----------
    def load(self) -> tuple[list[Problem], list[Problem]]:
        """Returns (train, test) problems. Default: the `train` and `test` splits; a single local file
        (`task.data_path=<file>`) is cut into both with a seeded shuffle (task.test_fraction, task.split_seed),
        so evaluation never runs on the problems trained on."""
        train = self._split("train")
        if self.cfg.data_path and Path(self.cfg.data_path).expanduser().is_file():
            from rapid_cli.console import console
            from rapid_cli.tasks.sources import split_records

            if len(train) < 2:
                raise RapidError(f"task.data_path={self.cfg.data_path} has {len(train)} problem; a train/test split "
                                 "needs at least 2 (or give a directory with train.jsonl and test.jsonl)")
            train, test = split_records(train, self.cfg.test_fraction, self.cfg.split_seed)
            console.print(f"[dim]{self.name}: one data file, so {len(test)} of {len(train) + len(test)} problems are "
                          f"held out for evaluation (task.test_fraction={self.cfg.test_fraction:g}, task.split_seed="
                          f"{self.cfg.split_seed}); a directory with train.jsonl and test.jsonl sets the split[/]",
                          soft_wrap=True)
            return train, test
        return train, self._split("test")

    def _split(self, split: str) -> list[Problem]:
        raise NotImplementedError

    def reward(self, completion: str, problem: Problem) -> float:
        raise NotImplementedError

    # -- shared ---------------------------------------------------------------------------
    def splits(self) -> tuple[list[Problem], list[Problem]]:
        if self._splits is None:
            train, test = self.load()
            if self.cfg.max_train is not None:
                train = train[: self.cfg.max_train]
            if self.cfg.max_test is not None:
                test = test[: self.cfg.max_test]
            self._splits = (train, test)
        return self._splits

    @property
    def train(self) -> list[Problem]:
        return self.splits()[0]

    @property
    def test(self) -> list[Problem]:
        return self.splits()[1]

    def messages(self, problem: Problem) -> list[dict]:
        msgs = [{"role": "system", "content": self.cfg.system_prompt}] if self.cfg.system_prompt else []
        return msgs + [{"role": "user", "content": self.cfg.prompt_template.format(question=problem.question)}]

    def prompt_ids(self, problem: Problem, tokenizer, chat_template: bool = True) -> list[int]:
        msgs = self.messages(problem)
        if chat_template and tokenizer.chat_template:
            ids = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
            return list(ids["input_ids"] if hasattr(ids, "keys") else ids)
        text = "\n\n".join(m["content"] for m in msgs) + "\n"
        return tokenizer(text, add_special_tokens=True)["input_ids"]

    def longest_prompt(self, tokenizer, chat_template: bool = True, sample: int = 256) -> PromptLength:
        """Tokens in the longest prompt, and which problem has it: among the first `sample` training and test
        problems and the `sample` longest in characters anywhere (so one huge row is found without tokenizing
        every row). With `task.max_prompt_tokens` set, longer prompts are dropped first (`drop_long_prompts`)."""
        self.drop_long_prompts(tokenizer, chat_template)
        head = [*self.train[:sample], *self.test[:sample]]
        chars = lambda p: sum(len(str(m.get("content", ""))) for m in self.messages(p))  # noqa: E731
        most = max(chars(p) for p in head)
        rest = [p for p in [*self.train[sample:], *self.test[sample:]] if chars(p) > most]
        candidates = head + sorted(rest, key=chars, reverse=True)[:sample]
        tokens, where = max(((len(self.prompt_ids(p, tokenizer, chat_template)), p.id) for p in candidates),
                            key=lambda t: t[0])
        return PromptLength(tokens, where)

    def drop_long_prompts(self, tokenizer, chat_template: bool = True, train_too: bool = True) -> None:
        """`task.max_prompt_tokens`: leaves out every problem whose prompt is longer (once; every prompt is
        tokenized), saying how many of each split went and the longest one's place. `train_too=False`
        (`rapid eval`): the test split only."""
        limit = getattr(self.cfg, "max_prompt_tokens", None)
        if limit is None or self._prompts_fitted:
            return
        self._prompts_fitted = train_too
        train, test = self.splits()
        lengths = {id(p): len(self.prompt_ids(p, tokenizer, chat_template)) for p in [*(train if train_too else []),
                                                                                      *test]}
        fits = lambda p: lengths.get(id(p), 0) <= limit  # noqa: E731
        kept = ([p for p in train if fits(p)], [p for p in test if fits(p)])
        dropped = len(train) - len(kept[0]), len(test) - len(kept[1])
        if not any(dropped):
            return
        longest = max([p for p in [*train, *test] if id(p) in lengths], key=lambda p: lengths[id(p)])
        for split, whole, left in (("training", train, kept[0]), ("test", test, kept[1])):
            if whole and not left:
                raise RapidError(f"task.max_prompt_tokens={limit} leaves no {split} problem: the shortest prompt is "
                                 f"{min(lengths[id(p)] for p in whole)} tokens")
        from rapid_cli.console import warn

        warn(f"task.max_prompt_tokens={limit}: left out {dropped[0]} of {len(train)} training and {dropped[1]} of "
             f"{len(test)} test problems with longer prompts (the longest: {longest.id}, {lengths[id(longest)]} "
             "tokens)")
        self._splits = kept

    @contextmanager
    def evaluating(self):
        """Scoring inside it is an evaluation's, not a training round's (tasks/custom.py counts only rounds)."""
        self._evaluating, before = True, getattr(self, "_evaluating", False)
        try:
            yield
        finally:
            self._evaluating = before

    def rewards(self, completions: list[str], problems: list[Problem]) -> list[float]:
        return [self.reward(c, p) for c, p in zip(completions, problems, strict=True)]

    def score(self, completions: list[str], problems: list[Problem], completion_ids=None,
              finish_reasons=None) -> Scores:
        """What the trainer and eval call: the rewards as `Scores` (a task with several reward functions,
        tasks/custom.py, also returns each one's values for the `reward/<name>` metrics)."""
        return Scores(self.rewards(completions, problems))

    def cli_args(self) -> str:
        """The task's part of a `rapid eval` command that evaluates on the same problems (quoted to paste)."""
        from rapid_cli.overrides import override

        return f"task={self.name}" + (f" {override('task.data_path', self.cfg.data_path)}" if self.cfg.data_path
                                      else "")

    @property
    def pass_threshold(self) -> float:
        """Eval counts a sample as correct when its reward is at least this (task.pass_threshold, 1.0)."""
        return self.cfg.pass_threshold
