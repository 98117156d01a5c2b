# one-off probe (issue 29): sdpa kernels (flash, math) and plain matmul+softmax attention, forward+backward,
# fp32 and bf16, at bucket shapes of the segmented attention (rows, query width, keys; 9 heads, 3 kv heads, d 64)
import torch, time
from torch.nn.attention import sdpa_kernel, SDPBackend
F = torch.nn.functional
def run(backend, n, Lq, Lk, dt, gqa):
    h, kv, d = 9, 3, 64
    q = torch.randn(n, h, Lq, d, dtype=dt, requires_grad=True)
    k = torch.randn(n, kv if gqa else h, Lk, d, dtype=dt, requires_grad=True)
    v = torch.randn(n, kv if gqa else h, Lk, d, dtype=dt, requires_grad=True)
    mask = torch.zeros(n, 1, Lq, Lk, dtype=dt); mask[..., -5:] = float("-inf")
    g = torch.randn(n, h, Lq, d, dtype=dt)
    def f():
        if backend == "manual":
            kk, vv = (k.repeat_interleave(h // kv, 1), v.repeat_interleave(h // kv, 1)) if gqa else (k, v)
            s = (q @ kk.transpose(-1, -2)) * d ** -0.5 + mask
            o = s.float().softmax(-1).to(dt) @ vv
        else:
            with sdpa_kernel(backend):
                o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
        o.backward(g)
    f()
    t = time.perf_counter()
    for _ in range(5): f()
    dt_ = (time.perf_counter() - t) / 5
    flops = 3 * 2 * 2 * n * h * Lq * Lk * d
    return dt_, flops / dt_ / 1e9
for dt in (torch.float32, torch.bfloat16):
  for (n, Lq, Lk) in [(16, 64, 300), (2, 200, 200), (16, 64, 450)]:
    for be in ("flash", "math", "manual"):
        b = {"flash": SDPBackend.FLASH_ATTENTION, "math": SDPBackend.MATH, "manual": "manual"}[be]
        try:
            s, r = run(b, n, Lq, Lk, dt, gqa=(be != "math"))
            print(dt, n, Lq, Lk, be, f"{s*1000:.1f} ms {r:.0f} GFLOP/s")
        except Exception as e: print(be, "ERR", str(e)[:100])
