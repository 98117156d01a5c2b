"""One row per run: pass@1 before -> round 4 -> end, run seconds (time/elapsed at the end), update seconds."""
import json, sys, glob, os
for arm in ("full", "lora", "lora-bf16-base"):
    for job in sorted(glob.glob(f"/work/runs/demo-lora/{arm}/*_*")):
        rows = [json.loads(l) for l in open(os.path.join(job, "metrics.jsonl"))]
        ev = {r["round"]: r["eval/pass@1"] for r in rows if "eval/pass@1" in r}
        upd = sum(r.get("time/update", 0) for r in rows)
        old = sum(r.get("time/old_logprobs", 0) for r in rows)
        last = rows[-1]
        seed = job.split("seed=")[1].split(",")[0]
        print(f"| {arm} | {seed} | {ev[0]:.3f} -> {ev.get(4, float('nan')):.3f} -> {ev[max(ev)]:.3f} | "
              f"{last['time/elapsed']:.0f} ({upd:.0f} + pi_old {old:.0f}) |")
