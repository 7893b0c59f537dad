"""Training one run, or one packed group of same-size runs, to completion.

A fine-tuning/scratch group trains each member on its own D_F bytes
(repeated for as many epochs as needed), evaluates the target validation
loss every `eval_interval` steps (its own, or the group's) and early-stops
each member on it; a member that reaches the safety cap is marked `capped`,
one whose loss is not finite is marked `failed` and frozen. A pre-training group trains on its sources for
a fixed token budget and saves member checkpoints at given token counts.
Members that have stopped are dropped from the ensemble once half of it has.
"""
from __future__ import annotations

import contextlib
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from trainer.data import Sampler, Stream, eval_starts
from trainer.model import EnsembleGPT, GPTConfig, decay_mask

# Per-size learning rate and batch (sequences of 256 bytes). The pilot
# (PILOT.md) used 2e-3 / 1e-3 / 6e-4 at N = 0.10M / 0.79M / 3.2M and batch 32;
# the other sizes follow its trend, lr = 2e-3 * (N / 1e5)^-0.3 (a fit through
# those three points: it gives 1.9e-3 / 1.0e-3 / 7.1e-4), capped at 3e-3 for the
# smallest. Batch grows with D_F instead of size: runs on large D_F need more
# tokens per step to reach their early-stopping optimum in few steps.
LR_TABLE: dict[str, float] = {
    "25k": 3e-3,   # trend gives 3.0e-3
    "100k": 2e-3,  # pilot
    "330k": 1.4e-3,  # trend
    "800k": 1e-3,  # pilot
    "2m": 8e-4,    # trend
    "3m": 6e-4,    # pilot
    "7m": 5e-4,    # trend
    "14m": 4e-4,   # trend
    "19m": 3.5e-4,  # trend
}


# torch.compile (CUDA only) from this N up: below it steps are bound by kernel
# launches and short runs would spend more time compiling than they save.
COMPILE_MIN_PARAMS = 2e6


def batch_for(data_tokens: int | None) -> int:
    """Sequences per step: 32 (the pilot's) up to 1 MB of D_F, 64 up to 8 MB,
    128 beyond and for pre-training (the pilot's pre-training batch)."""
    if data_tokens is None or data_tokens > 8 * 2**20:
        return 128
    return 32 if data_tokens <= 2**20 else 64


def eval_interval_for(data_tokens: int, batch: int, ctx: int = 256) -> int:
    """Evaluate about every half epoch, between 25 and 250 steps: small D_F
    runs early-stop within a few hundred steps (PILOT.md), large ones late."""
    return int(np.clip(round(0.5 * data_tokens / (batch * ctx)), 25, 250))


@dataclass
class Settings:
    lr: float
    batch: int
    eval_interval: int
    patience: int = 5  # evaluations without improvement before stopping
    min_delta: float = 1e-3  # nats: smaller gains do not reset patience (a plateau ends the run)
    warmup: int = 100
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    eval_seqs: int = 256
    max_steps: int = 20_000  # safety cap (fine-tuning): reaching it marks the run capped
    max_epochs: float = 2_000.0  # likewise, in passes over D_F
    total_tokens: int | None = None  # pre-training budget: train exactly this many tokens


@dataclass
class Member:
    run_id: str
    seed: int
    stream: Stream
    val: Stream
    init: dict[str, torch.Tensor] | None = None
    data_tokens: int | None = None  # D_F; None for pre-training
    checkpoints: list[int] = field(default_factory=list)  # pre-training token counts
    eval_interval: int | None = None  # steps; None: the group's


def device_default() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class _AdamW:
    """AdamW over ensemble parameters with a per-member learning rate: a
    member whose rate is 0 (stopped, failed) is frozen exactly, and its
    gradient (even NaN) is masked out so it touches nothing."""

    def __init__(self, params: dict[str, torch.nn.Parameter], s: Settings):
        self.s = s
        self.names = list(params)
        self.m = {n: torch.zeros_like(p) for n, p in params.items()}
        self.v = {n: torch.zeros_like(p) for n, p in params.items()}
        self.t = 0

    @torch.no_grad()
    def step(self, params: dict[str, torch.nn.Parameter], lr: torch.Tensor) -> None:
        b1, b2 = self.s.betas
        self.t += 1
        bc1, bc2 = 1 - b1**self.t, 1 - b2**self.t
        live = lr > 0
        for n in self.names:
            p = params[n]
            shape = (-1,) + (1,) * (p.dim() - 1)
            g = torch.where(live.view(shape), p.grad, 0.0)
            self.m[n].lerp_(g, 1 - b1)
            self.v[n].mul_(b2).addcmul_(g, g, value=1 - b2)
            step = lr.view(shape)
            if decay_mask(n):
                p.mul_(1 - step * self.s.weight_decay)
            p.sub_(step * (self.m[n] / bc1) / ((self.v[n] / bc2).sqrt() + 1e-8))

    def select(self, keep: torch.Tensor) -> None:
        for d in (self.m, self.v):
            for n in d:
                d[n] = d[n].index_select(0, keep).contiguous()

    def state(self) -> dict:
        return {"m": self.m, "v": self.v, "t": self.t}

    def load(self, st: dict) -> None:
        self.m, self.v, self.t = st["m"], st["v"], st["t"]


@torch.no_grad()
def _clip(params: dict[str, torch.nn.Parameter], max_norm: float) -> None:
    """Clip each member's gradient to max_norm on its own."""
    sq = sum(p.grad.float().pow(2).flatten(1).sum(1) for p in params.values())
    scale = (max_norm / (sq.sqrt() + 1e-6)).clamp(max=1.0)
    for p in params.values():
        p.grad.mul_(scale.view(-1, *([1] * (p.dim() - 1))).to(p.grad.dtype))


def _eval_windows(val: Stream, ctx: int, n: int) -> np.ndarray:
    """Fixed eval windows for one member: split across a mix's components by weight."""
    w = np.asarray(val.weights, dtype=np.float64) / sum(val.weights)
    counts = np.floor(w * n).astype(int)
    counts[0] += n - counts.sum()
    rows = [a[s:s + ctx + 1] for a, c in zip(val.parts, counts) for s in eval_starts(a.size, ctx, c)]
    return np.stack(rows)


def train_group(
    cfg: GPTConfig,
    members: list[Member],
    s: Settings,
    device: torch.device | None = None,
    compile: bool | None = None,
    on_checkpoint: Callable[[Member, int, int, dict], None] | None = None,
    resume_path: Path | None = None,
    deadline: float | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[dict] | None:
    """Train the members as one ensemble; return one result dict per member
    (in order). Pre-training groups (s.total_tokens set) save resume state to
    resume_path at each checkpoint, and return None if `deadline`
    (time.monotonic()) passes before they finish: re-running resumes them."""
    device = torch.device(device) if device is not None else device_default()
    cuda = device.type == "cuda"
    if compile is None:
        compile = cuda and 12 * cfg.n_layer * cfg.d_model**2 >= COMPILE_MIN_PARAMS
    pretrain = s.total_tokens is not None
    t0 = time.time()
    M, T, B = len(members), cfg.ctx, s.batch

    model = EnsembleGPT(cfg, [m.seed for m in members])
    for i, m in enumerate(members):
        if m.init is not None:
            model.load_member(i, m.init)
    model.to(device)
    opt = _AdamW(dict(model.named_parameters()), s)
    sampler = Sampler([m.stream for m in members], [m.seed for m in members], T, B, device)
    evals = torch.from_numpy(np.stack([_eval_windows(m.val, T, s.eval_seqs) for m in members])).to(device)

    # Only the training step is compiled: evaluation is a small share of the
    # work and a second graph per shape would double compile time.
    loss_fn = eval_fn = model.member_losses
    if compile:
        _raise_recompile_limit()
        loss_fn = _Compiled(model.member_losses)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()

    total_steps = math.ceil(s.total_tokens / (B * T)) if pretrain else s.max_steps
    rec = [
        dict(curve_tokens=[], curve_loss=[], train_loss=[], best=math.inf, best_step=0, since=0,
             status=None, reason="", steps=0)
        for _ in members
    ]
    step = 0
    pending_ckpt = [sorted(m.checkpoints) for m in members]
    active = list(range(M))  # indices into members of the rows still in the model
    lr_live = torch.ones(M, device=device)
    train_sum = torch.zeros(M, device=device)
    train_n = torch.zeros(M, device=device)
    # Members may evaluate on their own schedules (e.g. different D_F in one pack).
    every = [m.eval_interval or s.eval_interval for m in members]
    if resume_path is not None and resume_path.exists():
        st = torch.load(resume_path, map_location=device, weights_only=False)
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(st["params"][n])
        opt.load(st["opt"])
        sampler.set_state(st["rng"])
        rec, step, pending_ckpt = st["rec"], st["step"], st["pending"]
        train_sum, train_n = st["train_sum"], st["train_n"]

    def save_resume() -> None:
        if resume_path is None:
            return
        st = dict(params={n: p.detach() for n, p in model.named_parameters()}, opt=opt.state(),
                  rng=sampler.state(), rec=rec, step=step, pending=pending_ckpt, train_sum=train_sum, train_n=train_n)
        _atomic_torch_save(st, resume_path)

    @torch.no_grad()
    def evaluate() -> list[float]:
        rows = evals[active] if len(active) < M else evals
        out = torch.zeros(len(active), device=device)
        chunk = max(1, min(rows.shape[1], 2**16 // max(1, len(active))))
        for i in range(0, rows.shape[1], chunk):
            w = rows[:, i:i + chunk].long()
            with amp:
                out += eval_fn(w[..., :-1], w[..., 1:]) * w.shape[1]
        return (out / rows.shape[1]).tolist()

    while step < total_steps and active:
        if pretrain and deadline is not None and time.monotonic() > deadline:
            save_resume()
            return None
        warm = min(1.0, (step + 1) / s.warmup)
        x, y = sampler.next()
        with amp:
            losses = loss_fn(x, y)
        losses.sum().backward()
        params = dict(model.named_parameters())
        _clip(params, s.grad_clip)
        opt.step(params, s.lr * warm * lr_live)
        model.zero_grad(set_to_none=True)
        train_sum += losses.detach().float()
        train_n += 1
        step += 1
        tokens = step * B * T

        if pretrain:
            for j, i in enumerate(active):
                while pending_ckpt[i] and tokens >= pending_ckpt[i][0]:
                    p = pending_ckpt[i].pop(0)
                    if on_checkpoint is not None:
                        on_checkpoint(members[i], p, tokens, model.member_state(j))
                    save_resume()

        last = step == total_steps
        due = [j for j, i in enumerate(active) if last or step % every[i] == 0]
        if not due:
            continue
        vals = evaluate()
        tl = (train_sum / train_n).tolist()
        for j in due:
            i = active[j]
            train_sum[j] = 0.0
            train_n[j] = 0
            r = rec[i]
            if r["status"] is not None:
                continue
            r["steps"] = step
            r["curve_tokens"].append(tokens)
            r["curve_loss"].append(vals[j])
            r["train_loss"].append(tl[j])
            if not (math.isfinite(vals[j]) and math.isfinite(tl[j])):
                r["status"], r["reason"] = "failed", f"non-finite loss by step {step}"
            else:
                # The best loss is the minimum; only a real gain resets patience.
                gain = r["best"] - vals[j]
                if gain > 0:
                    r["best"], r["best_step"] = vals[j], step
                r["since"] = 0 if gain > s.min_delta else r["since"] + 1
            if r["status"] is None and not pretrain:
                if r["since"] >= s.patience:
                    r["status"] = "ok"
                elif step >= s.max_steps or tokens >= s.max_epochs * members[i].data_tokens:
                    r["status"], r["reason"] = "capped", f"safety cap reached at step {step}"
            if r["status"] is not None:
                lr_live[j] = 0.0
        if progress is not None:
            done = sum(r["status"] is not None for r in rec)
            progress(f"step {step}/{total_steps if pretrain else '?'} done {done}/{M}")
        # Drop stopped members once half of the ensemble has stopped (not in
        # pre-training, whose resume state keeps the whole ensemble).
        live = [j for j, i in enumerate(active) if rec[i]["status"] is None]
        if not pretrain and (len(live) <= len(active) // 2 or not live):
            if not live:
                active = []
                break
            keep = torch.tensor(live, device=device)
            model.select(live)
            loss_fn = eval_fn = model.member_losses
            if compile:
                loss_fn = _Compiled(model.member_losses)
            opt.select(keep)
            sampler.select(live)
            lr_live = lr_live[keep]
            train_sum, train_n = train_sum[keep], train_n[keep]
            active = [active[j] for j in live]

    if pretrain:
        for i in active:
            if rec[i]["status"] is None:
                rec[i]["status"] = "ok"
    wall = time.time() - t0
    results = []
    for k, (m, r) in enumerate(zip(members, rec)):
        ok = r["status"] != "failed"
        results.append(dict(
            run_id=m.run_id,
            status=r["status"] or "failed",
            status_reason=r["reason"],
            loss=r["best"] if ok and math.isfinite(r["best"]) else float("nan"),
            best_step=r["best_step"],
            best_tokens=r["best_step"] * B * T,
            steps=r["steps"],
            tokens_seen=r["steps"] * B * T,
            epochs=(r["steps"] * B * T / m.data_tokens) if m.data_tokens else None,
            curve_tokens=r["curve_tokens"],
            curve_loss=r["curve_loss"],
            train_loss=r["train_loss"],
            batch=B, lr=s.lr, eval_interval=every[k],
            group_size=M, group_wall_s=wall,
            device=device_name(device),
        ))
    return results


class _Compiled:
    """torch.compile of the training step that falls back to eager (with a
    warning) if compilation itself fails, so a compiler problem on some torch
    version costs speed, not the grid."""

    def __init__(self, fn):
        self.eager, self.fn, self.tried = fn, torch.compile(fn), False

    def __call__(self, *args):
        if self.tried:
            return self.fn(*args)
        self.tried = True
        try:
            return self.fn(*args)
        except torch.cuda.OutOfMemoryError:
            raise
        except Exception as e:  # noqa: BLE001 - any compiler failure
            warnings.warn(f"torch.compile failed ({type(e).__name__}: {str(e)[:200]}); training eager instead")
            self.fn = self.eager
            return self.fn(*args)


def _raise_recompile_limit() -> None:
    """Each model size and ensemble width is a new graph; torch's default
    limit (8) would silently fall back to eager in a long grid."""
    import torch._dynamo

    cfg = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(cfg, name):
            setattr(cfg, name, 256)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({os.cpu_count()} cores)"


def _atomic_torch_save(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def save_checkpoint(path: Path, cfg: GPTConfig, state: dict, meta: dict) -> None:
    """A single-member checkpoint: config, weights, and where it came from."""
    _atomic_torch_save({"config": cfg.to_dict(), "state": state, "meta": meta}, path)


def load_checkpoint(path: Path, cfg: GPTConfig) -> dict[str, torch.Tensor]:
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    ck = torch.load(path, map_location="cpu", weights_only=True)
    if ck.get("config") != cfg.to_dict():
        raise ValueError(f"checkpoint {path} is for model {ck.get('config')}, not {cfg.to_dict()}")
    return ck["state"]
