"""Every command in README.md runs, as a user would type it, with a short budget.

The commands are read from the README's ```bash blocks, so a command added there is run here. Each runs
in one shared working directory (like a user's shell session, so `train.resume=auto` finds the run a
previous command started), against an offline hub cache holding stand-ins under the real repo ids
(tests/hubcache.py). What changes from the README text, and why:
- BUDGET keys the command does not set itself are appended (one short round, tiny batches, the HF sampler;
  the vLLM path of the mission command is run by tests/test_hub_presets.py); a sweep without a model
  trains the tiny model (it runs many jobs);
- placeholders the README leaves to the user (`/path/to/...`, `<run>`, dates) become real paths;
- NOT_RUN lists the commands that cannot run on this machine, with the reason.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import RAPID, REPO, offline_hub_env
from rapid_cli.hardware import fast_bf16

BUDGET = ["train.rounds=1", "algo.steps_per_generation=1", "algo.prompts_per_step=2", "algo.group_size=2",
          "algo.micro_batch_size=2", "sampler.max_tokens=8", "eval.limit=2", "eval.n=1", "eval.k=[1]",
          "train.log_samples=0", "sampler=hf", "logger.wandb.mode=disabled"]

NOT_RUN = {
    "make test": "CI runs it; this test is part of it",
    "make test-fast": "a subset of `make test`, which CI runs",
    "rapid train -m hydra/launcher=rapid_slurm hydra.launcher.partition=gpu seed=0,1,2":
        "needs a SLURM cluster; tests/test_sweeps.py composes the launcher config",
    "rapid train -m hydra/launcher=rapid_slurm_multinode hydra.launcher.nodes=2 hydra.launcher.partition=gpu "
    "train.parallel=fsdp": "needs a SLURM cluster; tests/test_sweeps.py composes the launcher config",
    "torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint node0:29500 --rdzv-id rapid1 "
    "-m rapid_cli train train.parallel=fsdp model=qwen-1.5b task=math": "needs two machines",
}

# Text replacements before a command runs (the README's placeholders, and sizes this 2-core machine lacks).
REWRITES = [
    ("make install && make demo", "rapid train experiment=cpu-demo"),  # CI runs `make install` itself
    ("hydra.sweeper.n_trials=30", "hydra.sweeper.n_trials=2"),
    ("--nproc-per-node 4", "--nproc-per-node 2"),
    ("--nproc-per-node 8", "--nproc-per-node 2"),
]
if not fast_bf16(cuda=False):  # an explicit bf16 is refused where the CPU has no bf16 units (test_numerics.py)
    REWRITES.append(("train.mixed_precision=bf16", "train.mixed_precision=auto"))


def readme_commands() -> list[str]:
    """Shell commands of the README's bash blocks: continuation lines joined, comments dropped."""
    text = (REPO / "README.md").read_text()
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.DOTALL):
        joined = re.sub(r"\\\n\s*", "", block)
        for line in joined.splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line and not line.startswith("#"):
                out.append(line)
    return list(dict.fromkeys(out))  # a command shown twice runs once


COMMANDS = readme_commands()


def readme_block(lang: str, after: str) -> str:
    """The first ```lang block of README.md after the text `after` (a file the README shows in full)."""
    text = (REPO / "README.md").read_text()
    return re.search(rf"```{lang}\n(.*?)```", text[text.index(after):], re.DOTALL).group(1)


def test_the_custom_task_files_the_readme_shows_are_what_its_commands_need():
    row = json.loads(readme_block("json", after="`problems.jsonl`"))
    assert {"question", "answer"} <= set(row)  # task.prompt_field=question; numeric_match reads `answer`
    namespace = {}
    exec(readme_block("python", after="`my_rewards.py`"), namespace)
    assert namespace["format_ok"](["36", "The answer is 36."]) == [1.0, 0.0]


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def with_budget(argv: list[str]) -> list[str]:
    if argv[:1] == ["make"] or not {"train", "eval"} & set(argv) or {"--help", "--cfg"} & set(argv):
        return argv
    given = {_key(a) for a in argv if "=" in a}
    sweep = [] if "-m" not in argv or "model" in given else ["model=tiny"]  # many jobs: the tiny model stands in
    return argv + sweep + [b for b in BUDGET if _key(b) not in given]


@pytest.fixture(scope="module")
def user_dir(tmp_path_factory, hub_home):
    """A user's working directory with the files the README's placeholders stand for."""
    from conftest import compose
    from rapid_cli.models import build_tiny_model
    from test_code_tasks import MBPP_FILE

    home = tmp_path_factory.mktemp("user")
    (home / "MbppPlus.jsonl.gz").symlink_to(MBPP_FILE)
    gsm = home / "gsm8k"
    gsm.mkdir()
    for split in ("train", "test"):
        (gsm / f"{split}.jsonl").write_text("".join(
            json.dumps({"question": f"Tom has {a} apples and buys {b} more. How many now?",
                        "answer": f"{a} + {b}\n#### {a + b}"})
            + "\n" for a in range(6) for b in range(3)))
    # "Your own task": the user's problems and reward module in the working directory
    (home / "problems.jsonl").write_text("".join(json.dumps({"question": f"What is {a} + {b}?", "answer": str(a + b)})
                                                 + "\n" for a in range(5) for b in range(4)))
    (home / "my_rewards.py").write_text(readme_block("python", after="`my_rewards.py`"))
    model = build_tiny_model(compose(["model=tiny"]).model)
    return {"cwd": home, "env": offline_hub_env(hub_home), "/path/to/hf/model": str(model), "/path/to/gsm8k/": str(gsm)}


def _newest(pattern: str, cwd: Path) -> Path:
    found = sorted(cwd.glob(pattern), key=lambda p: p.stat().st_mtime)
    assert found, f"no {pattern} under {cwd}: an earlier README command should have made it"
    return found[-1]


def resolve_placeholders(cmd: str, ctx: dict) -> str:
    cwd = ctx["cwd"]
    for old, new in REWRITES:
        cmd = cmd.replace(old, new)
    for placeholder in ("/path/to/hf/model", "/path/to/gsm8k/"):
        cmd = cmd.replace(placeholder, ctx[placeholder])
    if "outputs/<run>" in cmd or "outputs/2026-" in cmd:
        run = _newest("outputs/*/*/checkpoints", cwd).parent
        newest = max((run / "checkpoints").glob("round-*"))  # its model/ or, for a LoRA run, its adapter/
        cmd = re.sub(r"outputs/(<run>|\d{4}-\d\d-\d\d/\d\d-\d\d-\d\d)(/checkpoints/round-\d+/(model|adapter))?",
                     lambda m: str(newest / m.group(3) if m.group(2) else run), cmd)
        if " ... " in cmd:
            import yaml

            same = [o for o in yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text())
                    if not o.startswith("train.resume")]
            cmd = cmd.replace(" ... ", " " + " ".join(shlex.quote(o) for o in same) + " ")
    if "multirun/2026-" in cmd:
        cmd = re.sub(r"multirun/\d{4}-\d\d-\d\d/\d\d-\d\d-\d\d", str(_newest("multirun/*/*", cwd)), cmd)
    return cmd


def test_the_readme_has_commands_and_every_one_is_run_or_excused():
    assert len(COMMANDS) >= 20
    assert set(NOT_RUN) <= set(COMMANDS), set(NOT_RUN) - set(COMMANDS)  # stale excuses go


@pytest.mark.slow
@pytest.mark.parametrize("command", COMMANDS)
def test_readme_command(command, user_dir):
    if command in NOT_RUN:
        pytest.skip(NOT_RUN[command])
    argv = with_budget(shlex.split(resolve_placeholders(command, user_dir)))
    if argv[0] == "rapid":
        argv[0] = RAPID
    elif argv[0] == "torchrun":
        argv[0] = str(Path(sys.executable).parent / "torchrun")
    cwd = REPO if argv[0] == "make" else user_dir["cwd"]
    proc = subprocess.run(argv, cwd=cwd, env=user_dir["env"], capture_output=True, text=True, timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{shlex.join(argv)}\n{out[-4000:]}"
    assert "Traceback" not in out, out[-4000:]


def test_the_config_groups_table_lists_every_option_in_conf():
    """The README's table of config groups had drifted from conf/ (the paper-* presets were missing): every
    option file of a user-facing group is named in its row, and the row names no option that is not there."""
    import re

    rows = {}
    section = (REPO / "README.md").read_text().split("### Config groups", 1)[1].split("\n\n")[1]  # the table
    for line in section.splitlines():
        cells = [c.strip() for c in line.split(" | ")]
        if len(cells) >= 3 and re.fullmatch(r"\| `[a-z]+`", cells[0]):
            rows[cells[0].strip("| `")] = set(re.findall(r"`([^`]+)`", cells[1]))
    groups = {d.name: {p.stem for p in d.glob("*.yaml")} for d in (REPO / "conf").iterdir()
              if d.is_dir() and d.name != "hydra"}  # hydra/: the launcher and sweeper, set up in README's Sweeps
    assert set(rows) == set(groups), (sorted(rows), sorted(groups))
    for group, options in groups.items():
        assert rows[group] == options, (group, sorted(rows[group] ^ options))
