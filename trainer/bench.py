"""`transfer-train bench`.

CPU: tokens/s and achieved GFLOP/s of the project's training step for a few
sizes (one thread, as the CPU scheduler runs it), against a plain
single-model training loop of the same shape (nn.Linear layers,
torch.optim.AdamW) and against this machine's fp32 matmul peak, all
measured in the same run.

GPU: throughput of the packed scheduler against a naive loop that trains
the same cells one at a time in eager mode, and model FLOP utilisation on a
large size. Both paths call `train_group`, on synthetic bytes, for a fixed
number of steps (no early stopping), so the comparison is the scheduler's
and nothing else."""
from __future__ import annotations

import time

import numpy as np
import torch

from trainer.data import Stream
from trainer.model import EnsembleGPT, config_for
from trainer.train import LR_TABLE, Member, Settings, device_name, train_group

# Dense bf16 peak (no sparsity), TFLOP/s, by a substring of the device name.
PEAK_BF16_TFLOPS = {"H100 SXM": 989.0, "H100 80GB HBM3": 989.0, "H100 PCIe": 756.0, "H100 NVL": 835.0,
                    "H200": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0}


def peak_tflops(name: str) -> float | None:
    for k, v in PEAK_BF16_TFLOPS.items():
        if k in name:
            return v
    return None


def _data(n: int = 4 << 20, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8)


def timed_group(size: str, members: int, batch: int, steps: int, device, compile: bool, warm_steps: int = 10) -> dict:
    """Train `members` cells of `size` as one ensemble for warm_steps + steps;
    tokens/s over the last `steps` (compilation and warm-up excluded)."""
    cfg = config_for(size)
    data = _data()
    val = Stream([data[:65536]], [1.0])
    ms = [Member(f"b{i}", i, Stream([data], [1.0]), val, data_tokens=data.size) for i in range(members)]
    stamps: list[float] = []

    def mark(_msg: str) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())

    s = Settings(lr=LR_TABLE[size], batch=batch, eval_interval=warm_steps, patience=10**9, warmup=10,
                 eval_seqs=1, report_seqs=1, max_steps=warm_steps + steps)
    t0 = time.perf_counter()
    train_group(cfg, ms, s, device=device, compile=compile, progress=mark)
    wall = time.perf_counter() - t0
    # An eval (and a mark) at step 0, on the early schedule and every warm_steps:
    # the mark at warm_steps ends warm-up and compilation.
    timed = stamps[-1] - stamps[-1 - steps // warm_steps]
    tokens = members * batch * cfg.ctx * steps
    n = EnsembleGPT(cfg, [0]).n_params()
    return dict(size=size, members=members, batch=batch, tokens_per_s=tokens / timed, wall_s=wall,
                setup_s=wall - timed, n_params=n)


def naive_loop(size: str, members: int, batch: int, steps: int, device) -> dict:
    """The same cells one at a time, eager, M=1 each."""
    total_t, total_tok = 0.0, 0
    for _ in range(members):
        r = timed_group(size, 1, batch, steps, device, compile=False)
        tok = batch * 256 * steps
        total_tok += tok
        total_t += tok / r["tokens_per_s"]
    return dict(size=size, tokens_per_s=total_tok / total_t)


def run_bench(sizes: list[str], large: str, members: int, steps: int, device, peak: float | None = None,
              batch: int = 32, large_members: tuple[int, ...] = (1, 2, 4), large_batch: int = 64,
              log=print) -> str:
    """The Markdown table; each row is also passed to `log` as soon as it is measured."""
    name = device_name(device)
    peak = peak or peak_tflops(name)
    rows = _Rows(log)
    rows += [f"Device: {name}; {members} cells per size, batch {batch} x 256 bytes, {steps} timed steps per cell.",
            "", "| size | N | naive eager loop (tok/s) | packed (tok/s) | speed-up |", "|---|---|---|---|---|"]
    compile = device.type == "cuda"
    for size in sizes:
        nv = naive_loop(size, members, batch, steps, device)
        pk = timed_group(size, members, batch, steps, device, compile=compile)
        rows += [f"| {size} | {pk['n_params']:.3g} | {nv['tokens_per_s']:.3g} | {pk['tokens_per_s']:.3g} | "
                    f"{pk['tokens_per_s'] / nv['tokens_per_s']:.1f}x |"]
    rows += ["", "| size | N | members x batch | tok/s | model TFLOP/s | MFU |", "|---|---|---|---|---|---|"]
    for m in large_members:
        r = timed_group(large, m, large_batch, steps, device, compile=compile)
        tf = 6 * r["n_params"] * r["tokens_per_s"] / 1e12
        mfu = f"{100 * tf / peak:.1f}%" if peak else "n/a (give --peak-tflops)"
        rows += [f"| {large} | {r['n_params']:.3g} | {m} x {large_batch} | {r['tokens_per_s']:.3g} | {tf:.1f} | {mfu} |"]
    rows += ["", f"MFU = 6 * N * tokens/s / peak dense bf16 ({peak} TFLOP/s); N non-embedding. "
                f"Packed: one ensemble, {'bf16 autocast + torch.compile' if compile else 'fp32 eager'}."]
    return "\n".join(rows)


class _Rows(list):
    def __init__(self, log):
        super().__init__()
        self.log = log

    def __iadd__(self, new):
        for r in new:
            self.log(r)
        self.extend(new)
        return self


# --- CPU ---
def matmul_gflops(n: int = 2048, seconds: float = 1.0) -> float:
    """fp32 GFLOP/s of an n x n matmul on the current thread count."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    k, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds or k < 2:
        a @ b
        k += 1
    return 2 * n**3 * k / (time.perf_counter() - t0) / 1e9


class _PlainBlock(torch.nn.Module):
    def __init__(self, d: int, h: int):
        super().__init__()
        self.ln1, self.ln2 = torch.nn.LayerNorm(d, bias=False), torch.nn.LayerNorm(d, bias=False)
        self.qkv, self.o = torch.nn.Linear(d, 3 * d, bias=False), torch.nn.Linear(d, d, bias=False)
        self.fc, self.proj = torch.nn.Linear(d, 4 * d, bias=False), torch.nn.Linear(4 * d, d, bias=False)
        self.h = h

    def forward(self, x):
        B, T, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
        q, k, v = (t.view(B, T, self.h, d // self.h).transpose(1, 2) for t in (q, k, v))
        a = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.o(a.transpose(1, 2).reshape(B, T, d))
        return x + self.proj(torch.nn.functional.gelu(self.fc(self.ln2(x))))


class _PlainGPT(torch.nn.Module):
    """A nanoGPT-style single model of the same shape: the baseline."""

    def __init__(self, cfg):
        super().__init__()
        self.wte = torch.nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.wpe = torch.nn.Embedding(cfg.ctx, cfg.d_model)
        self.blocks = torch.nn.ModuleList(_PlainBlock(cfg.d_model, cfg.n_head) for _ in range(cfg.n_layer))
        self.ln_f = torch.nn.LayerNorm(cfg.d_model, bias=False)

    def forward(self, idx, targets):
        x = self.wte(idx) + self.wpe.weight[: idx.shape[1]]
        for b in self.blocks:
            x = b(x)
        logits = self.ln_f(x) @ self.wte.weight.T
        return torch.nn.functional.cross_entropy(logits.view(-1, logits.shape[-1]), targets.reshape(-1))


def plain_loop_tokens_per_s(size: str, batch: int, steps: int) -> float:
    cfg = config_for(size)
    torch.manual_seed(0)
    model = _PlainGPT(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=LR_TABLE[size], betas=(0.9, 0.95), weight_decay=0.1)
    data = torch.from_numpy(_data().astype(np.int64))
    g = torch.Generator().manual_seed(0)

    def step():
        s = torch.randint(0, data.numel() - cfg.ctx - 1, (batch,), generator=g)
        w = data[s.unsqueeze(1) + torch.arange(cfg.ctx + 1)]
        model(w[:, :-1], w[:, 1:]).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch * cfg.ctx / (time.perf_counter() - t0)


def run_cpu_bench(sizes: list[str], steps: int, batch: int = 16, log=print) -> str:
    """The CPU table (Markdown), one thread, as the CPU scheduler runs each worker."""
    from trainer.plan import flops_per_token

    import platform

    torch.set_num_threads(1)
    dev = torch.device("cpu")
    peak = matmul_gflops()
    rows = _Rows(log)
    rows += [f"Machine: {platform.processor() or platform.machine()}, {device_name(dev)}; batch {batch} x 256 bytes, "
             f"{steps} timed steps; fp32 2048x2048 matmul peak on one thread: {peak:.0f} GFLOP/s (same run).", "",
             "| size | N | plain loop (tok/s) | project step (tok/s) | project / plain | GFLOP/s | of matmul peak |",
             "|---|---|---|---|---|---|---|"]
    for size in sizes:
        plain = plain_loop_tokens_per_s(size, batch, steps)
        ours = timed_group(size, 1, batch, steps, dev, compile=False, warm_steps=max(2, steps // 3))
        gf = flops_per_token(size) * ours["tokens_per_s"] / 1e9
        rows += [f"| {size} | {ours['n_params']:.3g} | {plain:.3g} | {ours['tokens_per_s']:.3g} | "
                 f"{ours['tokens_per_s'] / plain:.2f}x | {gf:.1f} | {100 * gf / peak:.0f}% |"]
    rows += ["", "GFLOP/s counts 6N per token plus attention and the output head (trainer/plan.py). "
                 "The project step includes its evaluations (EMA weights, selection windows)."]
    return "\n".join(rows)
