"""`rapid report <multirun dir>`: a sweep's runs as one markdown table and one PNG.

Runs are grouped by their overrides without `seed`; each group shows mean and spread over its seeds
of the final eval pass@1 and train reward (and, where logged, half the 95% interval of each evaluation over its
problems: the noise one seed's number carries), the wall-clock (all of it, and without the evaluations),
seconds per phase, and the training time at which the train reward (or, as the paper measures it, an eval
pass@k: `--target eval/pass@1=0.05`) first reached each `--target`; every eval pass@k logged; with
`--baseline LABEL` each row's training time over that row's. A first row gives the base model: `rapid eval`
results (eval.json) found under the directory and measured as the runs evaluate (split, problems, samples,
temperature, top_p, max_tokens), else the runs' round-0 evaluations. A `rapid eval` of a run's checkpoint saved
inside its job directory under another protocol (e.g. T=0.7: scripts/paper_table.sh's AGAIN) makes a second
table, each group's latest such checkpoint beside the base model measured the same way. Each eval pass@k also
comes as a table of the curves' points: after how many completions, at what training time (unfinished runs
included, as far as they got), so contenders compare at equal budgets. The PNG draws train reward
and every eval pass@k against training wall-clock (evaluation time taken out; the eval curves start from the
base model's): the mean over seeds as a line, min..max as a band; under them each row's seconds per phase as one
bar. Both are written into the sweep directory (report.md, report.png) and the table is printed.

Only finished runs (every planned round logged, metrics.jsonl whole) make the table's rows and the base model's:
an unfinished, cut or damaged run is named with why on a line of its own, and an unfinished one's curves are drawn
as "<label> (unfinished)".
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from dataclasses import dataclass
from pathlib import Path

from rapid_cli.errors import RapidError
from rapid_cli.logger import read_rows
from rapid_cli.rundir import failed_earlier
from rapid_cli.timing import PHASES, Phase

IGNORED = ("seed=", "hydra.", "logger.", "train.resume=", "eval.at_start=")  # change nothing trained or measured after


@dataclass
class Run:
    path: Path
    overrides: list[str]
    seed: str
    rows: list[dict]
    label: str = ""  # the swept overrides that set this run apart (filled by load_runs)
    unfinished: str = ""  # why its last values are no final result (e.g. "unfinished: round 1 of 3"); "": finished
    protocol: Protocol | None = None  # how its evaluations sampled, where its saved config says

    @property
    def settings(self) -> dict[str, str]:
        return dict(o.split("=", 1) for o in self.overrides if "=" in o and not o.startswith(IGNORED))

    def last(self, key: str):
        """The key's last value after training began: the round-0 evaluation is the base model's, never a result."""
        values = [r[key] for r in self.rows if key in r and r.get("round", 0) > 0]
        return values[-1] if values else None

    def curve(self, key: str) -> list[tuple[float, float]]:
        """(training seconds, value): wall-clock minus the evaluations so far, which are measurement, not training."""
        out, evals = [], 0.0
        for r in self.rows:
            evals += r.get(Phase.EVAL.key, 0.0)
            if key in r and "time/elapsed" in r:
                out.append((r["time/elapsed"] - evals, r[key]))
        return out

    def seconds(self, phase: Phase) -> float:
        """Seconds spent in `phase` over the whole run."""
        return sum(r.get(phase.key, 0.0) for r in self.rows)

    @property
    def train_seconds(self) -> float:
        return self.rows[-1].get("time/elapsed", 0.0) - self.seconds(Phase.EVAL)

    def time_to(self, key: str, target: float, base: dict[str, dict] | None = None) -> float | None:
        """Training seconds until `key` first reached `target` (0 if the base model's evaluation already did)."""
        return next((t for t, v in eval_curve(self, key, base or {}) if v >= target), None)


@dataclass(frozen=True)
class Protocol:
    """How an evaluation sampled: two results compare only under the same one. (The prompt is not recorded: an
    evaluation beside a sweep must use the sweep's task settings.) None: not known (an older file)."""
    split: str | None = None
    problems: int | None = None
    n: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None

    def matches(self, other: Protocol) -> bool:
        """Equal wherever both are known."""
        return all(a is None or b is None or a == b
                   for a, b in zip(dataclasses.astuple(self), dataclasses.astuple(other), strict=True))

    def versus(self, own: Protocol | None) -> str:
        """What sets this protocol apart from the runs' own, e.g. "temperature 0.7 (the runs' own: 0.9)"."""
        known = [f.name for f in dataclasses.fields(self) if getattr(self, f.name) is not None]
        if own is None:
            return ", ".join(f"{f.replace('_', ' ')} {getattr(self, f)}" for f in known)
        differ = [f for f in known if getattr(own, f) is not None and getattr(self, f) != getattr(own, f)]
        if not differ:
            return "the runs' own protocol"
        return (", ".join(f"{f.replace('_', ' ')} {getattr(self, f)}" for f in differ) + " (the runs' own: "
                + ", ".join(str(getattr(own, f)) for f in differ) + ")")


@dataclass
class Evaluation:
    """One `rapid eval` result (eval.json): the base model's, or, inside a run's directory, one of its checkpoints'."""
    path: Path
    seed: str
    protocol: Protocol
    metrics: dict
    run: Path | None = None  # the job directory it lies in
    round: int | None = None  # the checkpoint's round, where its model path names one


def run_protocol(job: Path, rows: list[dict]) -> Protocol | None:
    """How the job's evaluations sampled, from its saved config (as `rapid eval` would with the same keys) and
    its logged problem count; None where the config does not say."""
    from omegaconf import OmegaConf

    from rapid_cli.evaluate import eval_params

    try:
        cfg = OmegaConf.load(job / ".hydra" / "config.yaml")
        params = eval_params(cfg.eval, cfg.sampler.max_tokens, 0)
        split = str(cfg.eval.split)
    except Exception:  # no config, or one without an eval section
        return None
    problems = next((r["eval/problems"] for r in reversed(rows) if "eval/problems" in r), None)
    return Protocol(split, problems, params.n, params.temperature, params.top_p, params.max_tokens)


def parse_target(text: str) -> tuple[str, float]:
    """--target: a number (the train reward) or KEY=NUMBER for any logged metric, e.g. eval/pass@1=0.05."""
    key, _, value = text.rpartition("=")
    try:
        return key or "reward/mean", float(value)
    except ValueError:
        raise RapidError(f"--target {text}: give a number (the train reward) or KEY=NUMBER, "
                         "e.g. --target eval/pass@1=0.05") from None


def target_column(key: str, value: float) -> str:
    return f"s to {'reward' if key == 'reward/mean' else key} >= {value:g}"


def planned(job: Path) -> int | None:
    """The rounds the job's saved config planned (train.rounds, or what train.samples buys); None if unknown."""
    from omegaconf import OmegaConf

    from rapid_cli.validation import planned_rounds

    try:
        return int(planned_rounds(OmegaConf.load(job / ".hydra" / "config.yaml")))
    except Exception:  # no config, or one this version cannot read: judged by its rows alone
        return None


def read_job(metrics: Path) -> Run:
    """One job directory's run, read defensively: whatever is damaged, unfinished or missing says so in
    `Run.unfinished` instead of raising."""
    from omegaconf import OmegaConf

    job = metrics.parent
    saved = job / ".hydra" / "overrides.yaml"
    problems: list[str] = []
    try:
        overrides = [str(o) for o in OmegaConf.load(saved)] if saved.exists() else []
    except Exception:
        overrides, problems = [], [".hydra/overrides.yaml is unreadable"]
    damaged: list[str] = []
    try:
        rows = read_rows(metrics, damaged)
        problems += [f"metrics.jsonl {line}" for line in damaged[:1]]  # the first says enough
    except OSError as err:
        rows, problems = [], [*problems, f"metrics.jsonl unreadable ({err.strerror or err})"]
    seed = next((o.split("=", 1)[1] for o in overrides if o.startswith("seed=")), "0")
    run = Run(job, overrides, seed, rows)
    done = max((r.get("round", 0) for r in rows if isinstance(r.get("round", 0), int)), default=0)
    plan = planned(job)
    failed = failed_earlier(job)  # a sweep's record outranks rows that look finished (the last save can fail)
    if failed is not None:
        run.unfinished = f"failed: {failed}"
    elif problems:
        run.unfinished = "; ".join(problems)
    elif done == 0:
        run.unfinished = "no round finished"
    elif plan is not None and done < plan:
        run.unfinished = f"unfinished: round {done} of {plan}"
    elif plan is None and "eval/pass@1" not in rows[-1] and any("eval/pass@1" in r for r in rows):
        run.unfinished = f"unfinished: round {done} was not evaluated, as the last round is"
    run.protocol = run_protocol(job, rows)
    return run


def load_runs(root: Path) -> list[Run]:
    """Every run under `root`, finished or not (`Run.unfinished` says which and why), labelled by the overrides
    that set it apart. Job directories with no metrics at all (a job that failed at start) come as runs without
    rows."""
    if not root.is_dir():
        raise RapidError(f"{root} is not a directory; give the sweep's directory, e.g. multirun/<date>/<time>")
    runs = [read_job(metrics) for metrics in sorted(root.rglob("metrics.jsonl"))]
    for job in sorted(p.parent.parent for p in root.rglob(".hydra/overrides.yaml")):
        if not (job / "metrics.jsonl").exists() and not (job / "eval.json").exists():
            run = read_job(job / "metrics.jsonl")
            if failed_earlier(job) is None:
                run.unfinished = "no metrics.jsonl: it failed or stopped before its first round"
            runs.append(run)
    if not runs:
        raise RapidError(f"no finished rounds under {root}: expected job directories with metrics.jsonl "
                         "(from rapid train -m)")
    # the runs whose settings are known set the labels (a job stopped halfway is labelled by what sets it apart
    # too); one with unreadable overrides would make every key look swept
    known = [r for r in runs if r.overrides] or runs
    keys = sorted({k for r in known for k in r.settings})
    swept = [k for k in keys if len({r.settings.get(k) for r in known}) > 1]
    for run in runs:  # a key a run did not set is left out: its preset's value (e.g. algo=rapid's A)
        run.label = " ".join(f"{k}={run.settings[k]}" for k in swept if k in run.settings) or "(all runs alike)"
    return runs


def left_out(runs: list[Run]) -> list[str]:
    """The runs kept out of the means, each with why."""
    return [f"{r.path} ({r.unfinished})" for r in runs if r.unfinished]


def evaluations(root: Path) -> list[Evaluation]:
    """Every readable `rapid eval` result under `root`, each with the job directory it lies in (if any). A training
    job's own eval.json (beside its metrics.jsonl) is no separate evaluation."""
    import re

    out = []
    for path in sorted(root.rglob("eval.json")):
        if (path.parent / "metrics.jsonl").exists():
            continue
        try:
            result = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError, OSError):
            continue
        run = next((p for p in path.parents if (p / "metrics.jsonl").exists() and root in (p, *p.parents)), None)
        checkpoint = re.search(r"round-(\d+)", str(result.get("model", "")))
        protocol = Protocol(*(result.get(f.name) for f in dataclasses.fields(Protocol)))
        protocol = dataclasses.replace(protocol, split=protocol.split or "test")  # older files: the test split
        out.append(Evaluation(path, str(result.get("seed", 0)), protocol, with_standard_errors(result), run,
                              int(checkpoint[1]) if checkpoint else None))
    return out


def eval_only(root: Path, runs: list[Run] | None = None) -> dict[str, dict]:
    """The base model's `rapid eval` results under `root` (e.g. from `rapid eval -m seed=0,1`): their metrics by
    seed, of those measured as `runs` evaluate (split, problems, samples, temperature, top_p, max_tokens). An
    `eval.split=train` measurement, or one at another temperature, is no base row for them; an evaluation inside
    a run's directory is that run's checkpoint's."""
    return base_by_seed(evaluations(root), own_protocols(runs or []))


def own_protocols(runs: list[Run]) -> list[Protocol]:
    """How the runs evaluate (any test-split evaluation where no saved config says)."""
    return [r.protocol for r in runs if r.protocol is not None] or [Protocol(split="test")]


def base_by_seed(found: list[Evaluation], protocols: list[Protocol]) -> dict[str, dict]:
    """The base model's evaluations among `found` (those outside any run) measured under one of `protocols`, by seed.
    A seed measured again (on another machine, whose bf16 sampling draws other completions) is a measurement of its
    own, keyed `<seed>#2`, `#3`, ... in the order found, so the base row counts every one; the first stays under the
    seed itself, where a run of that seed starts its curve."""
    out: dict[str, dict] = {}
    for e in found:
        if e.run is None and any(e.protocol.matches(p) for p in protocols):
            again = sum(k.partition("#")[0] == e.seed for k in out)
            out[f"{e.seed}#{again + 1}" if again else e.seed] = e.metrics
    return out


def with_standard_errors(result: dict) -> dict:
    """An eval.json's metrics, with each pass@k's standard error computed from its per-problem counts where the
    file predates the logged one."""
    from rapid_cli.evaluate import EvalResult, pass_at_k_metrics

    metrics = dict(result.get("metrics", {}))
    n, counts = result.get("n"), [p.get("correct") for p in result.get("per_problem", [])]
    if isinstance(n, int) and counts and all(isinstance(c, int) for c in counts):
        ks = [int(k[10:]) for k in metrics if k.startswith("eval/pass@") and k[10:].isdigit()]
        recomputed = pass_at_k_metrics(EvalResult([], [], counts, 0), n, ks)
        for k in ks:
            metrics.setdefault(f"eval/pass@{k}_se", recomputed[f"eval/pass@{k}_se"])
    return metrics


def common_settings(runs: list[Run]) -> str:
    first = runs[0].settings
    same = [f"{k}={v}" for k, v in first.items() if all(r.settings.get(k) == v for r in runs)]
    return " ".join(same) or "(defaults)"


def _stat(values: list[float], fmt: str = "{:.3f}") -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(statistics.mean(values))} ± {fmt.format(statistics.stdev(values))}"


def pass_ks(runs: list[Run]) -> list[int]:
    """The k of every eval/pass@k the runs logged, ascending."""
    keys = {k for r in runs for row in r.rows for k in row if k.startswith("eval/pass@") and k[10:].isdigit()}
    return sorted(int(k[10:]) for k in keys)


def base_evals(runs: list[Run], evals: dict[str, dict] | None = None) -> dict[str, dict]:
    """The base model's evaluation, one per seed: `evals` (eval_only's), else the runs' evaluations before their
    first round (runs of one seed evaluate the same model with the same sampling seed, so the first run's
    stands for all of them)."""
    out: dict[str, dict] = dict(evals or {})
    for run in runs:
        first = next((r for r in run.rows if r.get("round") == 0 and "eval/pass@1" in r), None)
        if first is not None:
            out.setdefault(run.seed, first)
    return out


def group_runs(runs: list[Run]) -> dict[str, list[Run]]:
    """The runs by label (their seeds together), in the order first seen."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.label, []).append(run)
    return groups


def sweep_table(runs: list[Run], targets: list[tuple[str, float]], baselines: dict[str, str] | None = None,
                base_row: bool = False, evals: dict[str, dict] | None = None) -> tuple[list[str], list[list[str]]]:
    """One row per group of runs (mean ± std over seeds). `targets`: (key, value) pairs (`parse_target`), each a
    column of the training seconds until the key first reached the value, over the seeds that reached it.
    `baselines`: column name -> a row's label; each such column gives every row's mean training seconds over
    that row's ("-" where no row has the label). `base_row`: a first row with the base model's evaluation
    (`base_evals`), where there is one."""
    groups = group_runs(runs)
    baselines = baselines or {}
    ks = pass_ks(runs) or [1]
    base = base_evals(runs, evals)
    logged = {k for row in [*base.values(), *(r for run in runs for r in run.rows)] for k in row}
    se_ks = [k for k in ks if f"eval/pass@{k}_se" in logged]  # runs from before it was logged have none
    header = ["config", "seeds", "rounds", *[f"eval pass@{k}" for k in ks],
              *[f"eval pass@{k} 95% ± (problems)" for k in se_ks], "train reward", "wall-clock s",
              "train s (no eval)", *baselines, *[f"{p} s" for p in PHASES], *[target_column(*t) for t in targets]]
    rows = []
    if base and base_row:
        row = ["base model", ",".join(sorted(base)), "0",
               *[_stat([e.get(f"eval/pass@{k}") for e in base.values()]) for k in ks],
               *[_half_width([e.get(f"eval/pass@{k}_se") for e in base.values()]) for k in se_ks]]
        rows.append(row + ["-"] * (len(header) - len(row)))
    mean_train = {label: statistics.mean(r.train_seconds for r in group) for label, group in groups.items()}
    for label, group in groups.items():
        rows.append([
            label, ",".join(sorted(r.seed for r in group)), _stat([r.last("round") for r in group], "{:.0f}"),
            *[_stat([r.last(f"eval/pass@{k}") for r in group]) for k in ks],
            *[_half_width([r.last(f"eval/pass@{k}_se") for r in group]) for k in se_ks],
            _stat([r.last("reward/mean") for r in group]),
            _stat([r.last("time/elapsed") for r in group], "{:.1f}"), _stat([r.train_seconds for r in group], "{:.1f}"),
            *[f"{mean_train[label] / mean_train[b]:.2f}" if b in mean_train else "-" for b in baselines.values()],
            *[_stat([r.seconds(p) for r in group], "{:.1f}") for p in PHASES],
            *[_reached([r.time_to(key, value, base) for r in group]) for key, value in targets],
        ])
    return header, rows


def again_tables(runs: list[Run], found: list[Evaluation]) -> list[tuple[str, list[str], list[list[str]]]]:
    """Evaluations under another protocol than the runs' own: the runs' checkpoints evaluated again (`rapid eval
    model.path=<checkpoint> eval.temperature=0.7 hydra.run.dir=<job>/eval-t07`) and base-model evaluations that
    match no run's protocol (so none is dropped without a word). Per protocol a (title, header, rows) table, its
    first row the base model measured that way, then each group's latest evaluated checkpoint, mean over the seeds."""
    own = next((r.protocol for r in runs if r.protocol is not None), None)
    runs_own = own_protocols(runs)
    paths = {r.path for r in runs}
    latest: dict[Protocol, dict[Path, Evaluation]] = {}
    for e in found:
        if e.run is None and e.protocol.split == "test" and not any(e.protocol.matches(p) for p in runs_own):
            latest.setdefault(e.protocol, {})  # the base model alone, measured differently
        if e.run not in paths:
            continue
        kept = latest.setdefault(e.protocol, {})
        if e.run not in kept or (e.round or 0) >= (kept[e.run].round or 0):
            kept[e.run] = e
    tables = []
    for protocol, by_run in latest.items():
        base = base_by_seed(found, [protocol])
        measured = [*base.values(), *(e.metrics for e in by_run.values())]
        ks = sorted({int(k[10:]) for m in measured for k in m if k.startswith("eval/pass@") and k[10:].isdigit()})
        se_ks = [k for k in ks if any(f"eval/pass@{k}_se" in m for m in measured)]
        header = ["config", "seeds", *[f"eval pass@{k}" for k in ks],
                  *[f"eval pass@{k} 95% ± (problems)" for k in se_ks], "checkpoint round"]
        rows = [_eval_row("base model", list(base), list(base.values()), [0], ks, se_ks)] if base else []
        for label, group in group_runs([r for r in runs if r.path in by_run]).items():
            rows.append(_eval_row(label, [r.seed for r in group], [by_run[r.path].metrics for r in group],
                                  [by_run[r.path].round for r in group], ks, se_ks))
        tables.append((protocol.versus(own), header, rows))
    return tables


def budget_table(runs: list[Run], key: str, base: dict[str, dict]) -> tuple[list[str], list[list[str]]]:
    """`key` (an eval pass@k) after each number of completions trained on (`perf/samples`), mean ± std over the
    seeds with the training seconds it took (evaluations excluded): the curves' points as a table, where
    contenders compare at equal budgets. The base model sits at 0; an unfinished run gives the points it reached."""
    points: dict[str, dict[int, list[tuple[float, float]]]] = {}
    for run in runs:
        evals = 0.0
        for row in run.rows:
            evals += row.get(Phase.EVAL.key, 0.0)
            if key in row and row.get("round", 0) > 0 and "perf/samples" in row and "time/elapsed" in row:
                at = points.setdefault(run.label, {}).setdefault(int(row["perf/samples"]), [])
                at.append((row["time/elapsed"] - evals, row[key]))
    budgets = sorted({b for by_budget in points.values() for b in by_budget})
    header = ["config", "0", *[str(b) for b in budgets]]
    rows = [["base model", _stat([e.get(key) for e in base.values()]), *["-"] * len(budgets)]] if base else []
    for label, by_budget in points.items():
        cells = [f"{_stat([v for _, v in by_budget[b]])} ({statistics.mean(t for t, _ in by_budget[b]):.0f} s)"
                 if b in by_budget else "-" for b in budgets]
        rows.append([label, "-", *cells])
    return header, rows


def _eval_row(label: str, seeds: list[str], metrics: list[dict], rounds: list[int | None], ks: list[int],
              se_ks: list[int]) -> list[str]:
    return [label, ",".join(sorted(seeds)), *[_stat([m.get(f"eval/pass@{k}") for m in metrics]) for k in ks],
            *[_half_width([m.get(f"eval/pass@{k}_se") for m in metrics]) for k in se_ks], _stat(rounds, "{:.0f}")]


def _half_width(standard_errors: list[float | None]) -> str:
    """Half the 95% interval of an evaluation's pass@k over its problems, the mean over the seeds."""
    from rapid_cli.evaluate import Z95

    known = [se for se in standard_errors if se is not None]
    return f"{Z95 * statistics.mean(known):.3f}" if known else "-"


def _reached(seconds: list[float | None]) -> str:
    """Mean ± std of the seeds' seconds to a target, and how many seeds reached it."""
    hit = [t for t in seconds if t is not None]
    return f"{_stat(hit, '{:.1f}')} ({len(hit)}/{len(seconds)})"


def markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def eval_curve(run: Run, key: str, base: dict[str, dict]) -> list[tuple[float, float]]:
    """run.curve(key), starting at 0 s from the base model's evaluation of the run's seed (`base_evals`) when the
    run did not evaluate before its first round: the same model, so accuracy is drawn from where training began."""
    curve = run.curve(key)
    start = base.get(run.seed, {}).get(key)
    if start is not None and not any(r.get("round") == 0 and key in r for r in run.rows):
        curve = [(0.0, start), *curve]
    return curve


def plot(runs: list[Run], path: Path, evals: dict[str, dict] | None = None) -> Path:
    """Train reward and every eval pass@k against training wall-clock, one line per group (mean over seeds, band
    min..max), the base model dashed; under them each group's training seconds per phase."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    groups = group_runs(runs)
    base = base_evals([r for r in runs if not r.unfinished], evals)  # an unfinished run draws its own curve only
    panels = [("reward/mean", "train reward")] + [(f"eval/pass@{k}", f"eval pass@{k}") for k in pass_ks(runs)]
    fig = plt.figure(figsize=(4.2 * len(panels) + 2.5, 4.0 + 0.35 * len(groups) + 1.2), dpi=110)
    grid_spec = fig.add_gridspec(2, len(panels), height_ratios=[4.0, 0.35 * len(groups) + 1.2])
    axes = [fig.add_subplot(grid_spec[0, i]) for i in range(len(panels))]
    for ax, (key, title) in zip(axes, panels, strict=True):
        top = 0.0
        for i, (label, group) in enumerate(groups.items()):
            curves = [c for c in (eval_curve(r, key, base) for r in group) if c]
            if not curves:
                continue
            color = f"C{i % 10}"
            # Up to the slowest seed: a finished run holds its last value (np.interp clamps at the ends),
            # so the mean does not stop where the fastest seed ended.
            end = max(c[-1][0] for c in curves)
            grid = np.linspace(min(c[0][0] for c in curves), end, 50) if end > 0 else np.array([0.0])
            ys = np.array([np.interp(grid, [t for t, _ in c], [v for _, v in c]) for c in curves])
            ax.plot(grid / 60, ys.mean(0), color=color, label=f"{label} (n={len(curves)})")
            if len(curves) > 1:
                ax.fill_between(grid / 60, ys.min(0), ys.max(0), color=color, alpha=0.2)
            for c in curves:  # the points themselves, faint, so short runs are visible
                ax.plot([t / 60 for t, _ in c], [v for _, v in c], ".", color=color, alpha=0.35, ms=4)
            top = max(top, float(ys.max()))
        start = [e[key] for e in base.values() if key in e]
        if start and key != "reward/mean":
            ax.axhline(statistics.mean(start), color="0.4", ls="--", lw=1, label=f"base model (n={len(start)})")
            top = max(top, max(start))
        # Each panel its own scale from 0: a pass@1 of 2% is unreadable on a 0..1 axis shared with pass@8.
        ax.set_ylim(-0.02 * max(top, 0.05), min(1.02, 1.15 * top + 0.02) if top > 0 else 1.02)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("training wall-clock (minutes)", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mean over seeds; band min..max")
    axes[-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)

    bars = fig.add_subplot(grid_spec[1, :])
    phases = [p for p in PHASES if p is not Phase.EVAL]
    names = list(groups)
    left = np.zeros(len(names))
    for j, phase in enumerate(phases):
        seconds = np.array([statistics.mean(r.seconds(phase) for r in groups[n]) for n in names])
        bars.barh(names, seconds, left=left, color=f"C{j}", alpha=0.75, label=phase.value)
        left += seconds
    # what no phase timed (start-up, checkpoints, logging), so each bar ends at the row's "train s"
    other = np.maximum(np.array([statistics.mean(r.train_seconds for r in groups[n]) for n in names]) - left, 0.0)
    bars.barh(names, other, left=left, color="0.8", label="other")
    left += other
    for y, total in enumerate(left):
        bars.text(total, y, f" {total:.0f} s", va="center", fontsize=8)
    bars.invert_yaxis()
    bars.set_xlim(0, left.max() * 1.12 if left.max() > 0 else 1)
    bars.tick_params(axis="y", labelsize=8)
    bars.set_xlabel("training seconds per phase, mean over seeds (evaluation excluded everywhere)", fontsize=9)
    bars.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def report(root: Path, targets: list[tuple[str, float]] | None = None, baseline: str | None = None) -> Path:
    from rich.table import Table

    from rapid_cli.console import console, warn

    found = load_runs(root)
    runs = [r for r in found if not r.unfinished]
    skipped = left_out(found)
    if not runs:
        raise RapidError(f"no finished run under {root}: " + ", ".join(skipped))
    if baseline is not None and baseline not in {r.label for r in runs}:
        raise RapidError(f"--baseline {baseline!r} names no row; the rows are: "
                         f"{', '.join(dict.fromkeys(r.label for r in runs))}")
    found_evals = evaluations(root)  # read once: the base row and the evaluated-again tables
    evals = base_by_seed(found_evals, own_protocols(runs))
    again = again_tables(runs, found_evals)
    ratios = {f"x {baseline}": baseline} if baseline else None
    header, rows = sweep_table(runs, targets or [("reward/mean", 0.5)], ratios, base_row=True, evals=evals)
    skipped_line = f"{len(skipped)} runs left out of the means: {', '.join(skipped)}" if skipped else ""
    # unfinished runs' curves are drawn too, marked as such; damaged or empty ones are not
    partial = [dataclasses.replace(r, label=f"{r.label} (unfinished)") for r in found
               if r.unfinished.startswith("unfinished") and r.rows]
    base = base_evals(runs, evals)
    budgets = [(k, *budget_table(runs + partial, f"eval/pass@{k}", base)) for k in pass_ks(runs + partial)]
    budgets = [(k, h, r) for k, h, r in budgets if len(h) > 2]  # runs that logged no perf/samples have no points
    out = root / "report.md"
    out.write_text(f"# Sweep report: {root}\n\n{len(runs)} runs; all of them used: `{common_settings(runs)}`\n\n"
                   + (f"{skipped_line}\n\n" if skipped else "")
                   + f"{markdown(header, rows)}\n![curves](report.png)\n"
                   + "".join(f"\n## eval pass@{k} at each budget: completions trained on (training seconds)\n\n"
                             f"{markdown(h, r)}" for k, h, r in budgets)
                   + "".join(f"\n## Evaluated again: {title}\n\n{markdown(h, r)}" for title, h, r in again))
    plot(runs + partial, root / "report.png", evals=evals)
    table = Table(title=f"{root} ({len(runs)} runs)")
    # the console gets the headline columns; report.md has them all
    shown = [i for i, h in enumerate(header) if h in ("config", "seeds", "train reward", "train s (no eval)")
             or h.startswith(("eval pass@", "x ", "s to "))]
    for i in shown:
        table.add_column(header[i], justify="left" if i == 0 else "right", overflow="fold",
                         min_width=24 if i == 0 else None)
    for row in rows:
        table.add_row(*[row[i] for i in shown])
    console.print(table)
    extras = [(f"eval pass@{k} after N completions (training s)", h, r) for k, h, r in budgets]
    for title, extra_header, extra_rows in extras + [(f"evaluated again: {t}", h, r) for t, h, r in again]:
        extra = Table(title=title)
        for i, name in enumerate(extra_header):
            extra.add_column(name, justify="left" if i == 0 else "right", no_wrap=i > 0,
                             min_width=24 if i == 0 else None)
        for row in extra_rows:
            extra.add_row(*row)
        console.print(extra)
    if skipped:
        warn(skipped_line)
    console.print(f"wrote {out} and {root / 'report.png'}")
    return out
