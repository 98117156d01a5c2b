#!/usr/bin/env bash
# The base model's success on GSM8K training problems under the candidate changes (docs/results.md, 2026-12-06):
# 200 training problems drawn at random (seed 0) from all of them, 200 from the 1960 of two lines (seed 1), each
# written as a data directory whose test split is the sample, then `rapid eval` at 4 samples a problem.
# Run from anywhere with rapid installed; the offline GSM8K copy is read through rapid's own task.
set -euo pipefail
work=${WORK:-/tmp/gsm8k-probe}
mkdir -p "$work"
python - "$work" <<'PY'
import json, random, sys
from pathlib import Path
from rapid_cli.config import compose_config
from rapid_cli.tasks import make_task
train = make_task(compose_config(["task=gsm8k"]).task).train
steps = lambda p: p.meta["solution"].split("####")[0].strip().count("\n") + 1  # lines, a blank one too
for name, rows in (("all", random.Random(0).sample(train, 200)),
                   ("two", random.Random(1).sample([p for p in train if steps(p) <= 2], 200))):
    for split in ("train", "test"):
        out = Path(sys.argv[1], name); out.mkdir(exist_ok=True)
        (out / f"{split}.jsonl").write_text("".join(json.dumps({"question": p.question, "answer": p.meta["solution"]})
                                                    + "\n" for p in rows))
# the few-shot prompt: the first two training problems (Natalia's clips, Weng's babysitting) with worked answers
q0, q1 = train[0].question, train[1].question
template = (f"Question: {q0}\nAnswer: In May she sold 48 / 2 = 24 clips. Altogether she sold 48 + 24 = 72 clips.\n"
            f"#### 72\n\nQuestion: {q1}\nAnswer: She earns 12 / 60 = 0.2 dollars a minute. For 50 minutes she "
            "earned 0.2 x 50 = 10 dollars.\n#### 10\n\nQuestion: {question}\nLet's think step by step and output "
            "the final answer after \"####\".")
Path(sys.argv[1], "task").mkdir(exist_ok=True)
Path(sys.argv[1], "task", "gsm8k_fewshot.yaml").write_text(
    "defaults:\n  - gsm8k\n  - _self_\nprompt_template: " + json.dumps(template) + "\n")
PY
C=(experiment=paper-gsm8k-long "hydra.searchpath=[file://$work]" eval.limit=200 eval.n=4 "eval.k=[1,4]")
run() { name=$1; shift; rapid eval "${C[@]}" "hydra.run.dir=$work/out/$name" "$@"; }
run all_t1 "task.data_path=$work/all" eval.temperature=1.0
run all_t07 "task.data_path=$work/all" eval.temperature=0.7
run two_t1 "task.data_path=$work/two" eval.temperature=1.0
run few_t1 task=gsm8k_fewshot "task.data_path=$work/all" eval.temperature=1.0
run two_t07 "task.data_path=$work/two" eval.temperature=0.7
run few_two_t07 task=gsm8k_fewshot "task.data_path=$work/two" eval.temperature=0.7
