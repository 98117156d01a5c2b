"""Your own task: any data set, scored by your reward functions (`task=custom`, conf/task/custom.yaml).

    rapid train task=custom task.data_path=problems.jsonl task.prompt_field=question \\
        'reward.functions=[{_target_: rapid_cli.rewards.numeric_match}, {_target_: my_rewards.format_ok, weight: 0.2}]'

Data: `task.data_path` (a .jsonl/.jsonl.gz/.json/.csv/.parquet file, a `datasets` `save_to_disk`
directory, or a directory with train.<ext> and test.<ext>) or `task.hub_id` with `task.hub_split`
(the normal path online). The test split is `task.test_path`, the directory's or the hub's test
split (`task.hub_test_split`), or else a seeded cut of the training rows (`task.test_fraction`,
`task.split_seed`). A row becomes the user message `task.prompt_template`, formatted with every column
by name and `{prompt}` for the `task.prompt_field` column; a row with a `task.messages_field` column
(a list of {role, content}) is used as the chat as is. `task.system_prompt` goes first in either case.
Every row is checked before training: a missing column, an empty file or a malformed row stops with
the file, the row and the column named.

Rewards: `reward.functions` (rewards/functions.py), weighted sum, each function's mean logged as
`reward/<name>`. `rapid eval` counts a sample correct when its total reaches `task.pass_threshold`.

Why the built-in tasks are not presets of this: each keeps what a generic loader cannot do without
growing their special cases into it: gsm8k parses `#### N` out of a solution, math skips empty
boxes, mbpp/humaneval convert their test scripts and drop problems whose tests cannot be converted
(before the split, so the split is stable), and all of them fall back to an offline wheel copy when the
hub is out of reach. Their reward rules are shared instead: `numeric_match`, `math_equivalent` and
`code_tests` (rewards/library.py, tasks/code.py) call the very functions those tasks use, so a preset written as
`task=custom` with those functions scores exactly as the built-in task does.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import TYPE_CHECKING

from rapid_cli.errors import RapidError
from rapid_cli.overrides import hydra_value
from rapid_cli.rewards.functions import EXTRAS, build_functions, make_pool, pool_size, score
from rapid_cli.tasks.base import Task
from rapid_cli.tasks.sources import read_rows, split_records
from rapid_cli.types import Problem, Scores

if TYPE_CHECKING:
    from rapid_cli.config import TaskConfig

_DATASET_MARKERS = ("dataset_dict.json", "dataset_info.json", "state.json")  # what save_to_disk writes
_EXTENSIONS = (".jsonl", ".jsonl.gz", ".json", ".csv", ".parquet")


def _from_disk(root: Path) -> dict[str, list[tuple[str, dict]]]:
    import datasets

    try:
        ds = datasets.load_from_disk(str(root))
    except Exception as err:  # datasets raises several kinds for a broken directory
        raise RapidError(f"{root}: not a readable save_to_disk directory ({str(err).splitlines()[0]})") from None
    splits = dict(ds) if isinstance(ds, datasets.DatasetDict) else {"train": ds}
    return {name: [(f"{root}[{name}], row {i + 1}", dict(r)) for i, r in enumerate(d)] for name, d in splits.items()}


def read_source(path: str) -> dict[str, list[tuple[str, dict]]]:
    """Split name -> (where, record) rows of a local file or directory; a single file is split 'train'."""
    root = Path(path).expanduser()
    if not root.exists():
        raise RapidError(f"data file {path} does not exist")
    if root.is_file():
        return {"train": [(f"{path}, {where}", rec) for where, rec in read_rows(root)]}
    if any((root / m).exists() for m in _DATASET_MARKERS):
        return _from_disk(root)
    found = {}
    for split in ("train", "test"):
        for ext in _EXTENSIONS:
            if (root / f"{split}{ext}").exists():
                f = root / f"{split}{ext}"
                found[split] = [(f"{f}, {where}", rec) for where, rec in read_rows(f)]
                break
    if "train" not in found:
        raise RapidError(f"{path} is a directory without train.jsonl (or .json/.csv/.parquet) or a save_to_disk "
                         "data set")
    return found


def _hub(cfg: TaskConfig, split: str) -> list[tuple[str, dict]]:
    from rapid_cli.tasks.sources import hub_split

    try:
        records = hub_split(cfg.hub_id, cfg.hub_config, split)
    except ConnectionError as err:
        raise RapidError(f"could not load {cfg.hub_id} split {split} from the hub ({err}); check task.hub_id and "
                         "task.hub_split, or download it and set task.data_path=") from None
    if not records:
        raise RapidError(f"{cfg.hub_id} split {split} has no records")
    return [(f"{cfg.hub_id}[{split}], row {i + 1}", r) for i, r in enumerate(records)]


def template_fields(template: str) -> list[str]:
    """The column names a prompt template uses.

    >>> template_fields("Solve: {question} ({unit}). Use {{braces}}.")
    ['question', 'unit']
    """
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as err:
        raise RapidError(f"task.prompt_template={template!r} is not a valid template ({err}); write literal braces as "
                         f"{{{{ }}}}") from None
    for name in names:
        if not name.isidentifier():
            raise RapidError(f"task.prompt_template={template!r}: {{{name}}} is not a column name")
    return list(dict.fromkeys(names))


class CustomTask(Task):
    name = "custom"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.functions = build_functions(self.reward_cfg.functions, self.reward_cfg)
        if not self.functions:
            raise RapidError("task=custom needs reward functions: reward.functions='[{_target_: "
                             "rapid_cli.rewards.numeric_match}]' (see docs/tasks.md, 'Your own task')")
        self._pool = None
        self._none_rounds: dict[str, int] = {}  # per function: training rounds in a row it returned only None
        self._none_warned: set[str] = set()  # the functions warned about (once each)
        self._check_threshold()

    def _check_threshold(self) -> None:
        """One line at start when the weights cannot add up to task.pass_threshold, assuming each function scores at
        most 1 (the usual range; a function may go higher, so it is a warning): no sample would count as correct."""
        from rapid_cli.console import warn

        best = sum(max(f.weight, 0.0) for f in self.functions)
        threshold = self.cfg.pass_threshold
        if best < threshold:
            terms = " + ".join(f"{max(f.weight, 0.0):g}" for f in self.functions)
            warn(f"task.pass_threshold={threshold:g} is more than the reward functions' weights add up to ({terms} = "
                 f"{best:g}, if each scores at most 1): no sample would count as correct and eval pass@k stays 0; set "
                 f"task.pass_threshold={best:g} or lower, or raise the weights")

    def _watch_none(self, parts: dict[str, list]) -> None:
        """After a training round's scoring: a function that returned None for every completion adds nothing to any
        reward (with no other function, every reward is 0 and the round trains on nothing). Said once; after
        reward.max_none_rounds such rounds in a row, the run stops."""
        from rapid_cli.console import warn

        limit = getattr(self.reward_cfg, "max_none_rounds", None)
        for name, values in parts.items():
            if not values or any(v is not None for v in values):
                self._none_rounds[name] = 0
                continue
            seen = self._none_rounds[name] = self._none_rounds.get(name, 0) + 1
            if limit is not None and seen >= limit:
                raise RapidError(f"reward function {name} returned None (not applicable) for every completion in "
                                 f"{seen} training rounds in a row, so it rewarded nothing; check what it returns, or "
                                 "raise reward.max_none_rounds (null: never stop)")
            if name not in self._none_warned:
                self._none_warned.add(name)
                alone = ", the only function: every reward is 0 and the round trains on nothing" if len(parts) == 1 \
                    else ""
                stops = f"; {limit} such rounds in a row stop the run (reward.max_none_rounds)" if limit else ""
                warn(f"reward function {name} returned None (not applicable) for all {len(values)} completions of "
                     f"this round{alone}{stops}")

    # -- data ---------------------------------------------------------------------------------------------------
    def load(self):
        c = self.cfg
        if c.data_path:
            splits = read_source(c.data_path)
            train = splits.get(c.hub_split or "train")
            if train is None:
                raise RapidError(f"{c.data_path} has no split {c.hub_split!r} (task.hub_split); it has "
                                 f"{', '.join(splits)}")
            test = splits.get(c.hub_test_split or "test")
        elif c.hub_id:
            train = _hub(c, c.hub_split or "train")
            test = _hub(c, c.hub_test_split) if c.hub_test_split else None
        else:
            raise RapidError("task=custom needs task.data_path=<file or directory> or task.hub_id=<org/name>")
        if c.test_path:
            given = read_source(c.test_path)  # a file, or a directory / DatasetDict: its test split, else its only one
            test = given.get("test", next(iter(given.values())))
        train_p = [self.to_problem(where, rec) for where, rec in train]
        if test is not None:
            return train_p, [self.to_problem(where, rec) for where, rec in test]
        if len(train_p) < 2:
            raise RapidError(f"{train[0][0].rsplit(',', 1)[0]} has 1 row; a train/test split needs at least 2 "
                             "(or give task.test_path=)")
        return split_records(train_p, c.test_fraction, c.split_seed)

    def to_problem(self, where: str, rec: dict) -> Problem:
        """One row, checked: the columns the prompt and the reward functions need are there and well formed."""
        c = self.cfg
        messages = rec.get(c.messages_field)
        if messages is not None:
            ok = isinstance(messages, list) and messages and all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in messages)
            if not ok:
                raise RapidError(f"{where}: column {c.messages_field!r} must be a non-empty list of {{role, content}} "
                                 "messages with string values")
            if c.system_prompt and messages[0]["role"] != "system":
                messages = [{"role": "system", "content": c.system_prompt}, *messages]
            question = messages[-1]["content"]
        else:
            values = {**rec, "prompt": rec.get(c.prompt_field)}
            for col in template_fields(c.prompt_template):
                if values.get(col) is None:
                    named = c.prompt_field if col == "prompt" else col
                    raise RapidError(f"{where}: missing column {named!r} (task.prompt_template={c.prompt_template!r} "
                                     f"uses it; the row has {', '.join(rec) or 'no columns'})")
            question = c.prompt_template.format(**values)
        have = set(rec) | set(EXTRAS) | ({"answer"} if c.answer_field in rec else set())
        for f in self.functions:
            missing = sorted(f.required - have)
            if missing:
                hint = " (set task.answer_field=<its column>)" if missing[0] == "answer" else ""
                raise RapidError(f"{where}: missing column {missing[0]!r}, which reward function {f.name} needs{hint}")
        answer = rec.get(c.answer_field)
        return Problem(id=where, question=question, answer="" if answer is None else str(answer),
                       meta={"row": rec, "messages": messages})

    def messages(self, problem: Problem) -> list[dict]:
        if problem.meta["messages"] is not None:
            return problem.meta["messages"]
        msgs = [{"role": "system", "content": self.cfg.system_prompt}] if self.cfg.system_prompt else []
        return msgs + [{"role": "user", "content": problem.question}]

    def cli_args(self) -> str:
        """Every task key that differs from conf/task/custom.yaml, and the reward functions, quoted for a shell."""
        import shlex

        import yaml
        from omegaconf import OmegaConf

        from rapid_cli.config import config_dir

        preset = yaml.safe_load((Path(config_dir()) / "task" / "custom.yaml").read_text())
        args = ["task=custom"]
        for key, value in OmegaConf.to_container(self.cfg, resolve=True).items():
            if key in preset and value != preset[key]:
                args.append(f"task.{key}={hydra_value(value)}")
        args.append("reward.functions=[" + ", ".join(hydra_value(e) for e in self.reward_cfg.functions) + "]")
        return " ".join(shlex.quote(a) for a in args)

    # -- rewards ------------------------------------------------------------------------------------------------
    def columns(self, problems: list[Problem], completion_ids=None, finish_reasons=None) -> dict[str, list]:
        """What the reward functions get by name: every column (None where a row lacks it), `answer`,
        `prompts` (TRL's: the chat for conversational rows, else the prompt text) and the token facts."""
        names = list(dict.fromkeys(k for p in problems for k in p.meta["row"]))
        cols = {k: [p.meta["row"].get(k) for p in problems] for k in names}
        cols["answer"] = [p.meta["row"].get(self.cfg.answer_field) for p in problems]
        cols["prompts"] = [p.meta["messages"] if p.meta["messages"] is not None else p.question for p in problems]
        if completion_ids is not None:
            cols["completion_ids"] = completion_ids
        if finish_reasons is not None:
            cols["truncated"] = [r == "length" for r in finish_reasons]
        return cols

    def score(self, completions: list[str], problems: list[Problem], completion_ids=None,
              finish_reasons=None) -> Scores:
        if self._pool is None and self.reward_cfg.pool != "none":
            self._pool = make_pool(self.reward_cfg.pool, self.reward_cfg.pool_workers)
        # TRL passes conversational completions as a one-message chat: reward functions written for it expect that
        texts = [[{"role": "assistant", "content": t}] if p.meta["messages"] is not None else t
                 for t, p in zip(completions, problems, strict=True)]
        scores = score(self.functions, texts, self.columns(problems, completion_ids, finish_reasons),
                       [p.id for p in problems], self._pool, pool_size(self.reward_cfg.pool_workers))
        if not self._evaluating:  # a training round's: evaluations are counted by their pass@k
            self._watch_none(scores.parts)
        return scores

    def rewards(self, completions: list[str], problems: list[Problem]) -> list[float]:
        return self.score(completions, problems).total
