"""`transfer-train bench`: throughput of the packed scheduler against a naive
loop that trains the same cells one at a time in eager mode, and model FLOP
utilisation on a large size. Both paths call `train_group`, on synthetic
bytes, for a fixed number of steps (no early stopping), so the comparison
is the scheduler's and nothing else."""
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
                 eval_seqs=1, max_steps=warm_steps + steps, max_epochs=1e12)
    t0 = time.perf_counter()
    train_group(cfg, ms, s, device=device, compile=compile, progress=mark)
    wall = time.perf_counter() - t0
    # An eval (and a mark) every warm_steps: the first mark ends warm-up and compilation.
    timed = stamps[-1] - stamps[0]
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
