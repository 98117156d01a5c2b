# one-off probe (issue 29, 2026-12-06, AMX Xeon): the bf16/fp32 product rate at the MLP shape, best-of and sustained
# run from the repository root: .venv/bin/python docs/results/amx-2026-12-06/probes/matmul_peak.py (imports scripts/bench_update.py)
import time, torch, sys
sys.path.insert(0, "scripts")
from bench_update import matmul_rate
for i in range(3):
    for dt in (torch.float32, torch.bfloat16):
        print(i, dt, round(matmul_rate(4096, 576, 1536, dt)), round(matmul_rate(4096, 576, 1536, dt, seconds=3.0)))
a=torch.randn(4096,576).bfloat16(); b=torch.randn(576,1536).bfloat16()
for k in range(3):
  t=time.perf_counter(); n=0
  while time.perf_counter()-t<2: a@b; n+=1
  print("sustained", 2*4096*576*1536*n/(time.perf_counter()-t)/1e9)
