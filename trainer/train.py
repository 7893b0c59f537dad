"""Training one run, or one packed group of same-size runs, to completion.

A fine-tuning/scratch group trains each member on its own D_F bytes
(repeated for as many epochs as needed) and measures it so that the loss it
reports is an honest estimate of the data-limited optimum:

- the weights evaluated are a power-function average of the iterates
  (see `ema_decay`), not the raw weights of a constant-rate run;
- the member is evaluated at step 0, on a log-spaced schedule up to its
  first regular evaluation, then every `eval_interval` steps, so an optimum
  reached within a few steps is resolved rather than hidden in the first
  evaluation;
- the stopping point is chosen on one half of the target's validation split
  (the *selection* windows) and the chosen weights are scored once on the
  other half (the *report* windows), so the reported loss carries no
  selection bias;
- stopping follows a smoothed selection curve with patience counted in
  regular evaluations (no minimum-gain rule that stops a curve that is
  still falling); a member that reaches its token budget is marked
  `capped`, one whose loss is not finite is marked `failed` and frozen.

A pre-training group trains on its sources for a fixed token budget and
saves checkpoints of its averaged weights at given token counts. Members
that have stopped are dropped from the ensemble once half of it has.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from trainer.data import Sampler, Stream, eval_starts
from trainer.files import atomic_torch_save
from trainer.model import EnsembleGPT, GPTConfig
from trainer.optim import AdamW, clip_per_member
from trainer.provenance import TRAINING_MODULES, code_version, trains_like

# Per-size peak learning rate, for AdamW at batch 16-32 sequences of 256
# bytes: lr = 2e-3 * (N / 1e5)^-0.3 through the three sizes measured first
# (2e-3 / 1e-3 / 6e-4 at N = 0.1M / 0.79M / 3.2M), capped at 3e-3. The
# fine-tuning sweep in trainer/BENCH.md checks it at 25k and 100k.
LR_TABLE: dict[str, float] = {
    "25k": 3e-3, "50k": 2.5e-3, "100k": 2e-3, "150k": 1.8e-3, "330k": 1.4e-3, "800k": 1e-3, "2m": 8e-4,
    "3m": 6e-4, "7m": 5e-4, "14m": 4e-4, "19m": 3.5e-4,
}

# A group with a resume file writes its state at least this often (and
# pre-training at each checkpoint), so a kill loses at most this much.
RESUME_EVERY_S = 600.0

# torch.compile (CUDA only) from this N up: below it steps are bound by kernel
# launches and short runs would spend more time compiling than they save.
COMPILE_MIN_PARAMS = 2e6

# Power-function weight average (Karras et al. 2024, "EDM2"): at step t the
# average has decay (1 - 1/t)^(gamma + 1), so it always spans the same
# *fraction* of the run (gamma = 6.94: relative width 0.10) whatever the run's
# length. A constant-decay EMA would average over a fixed number of steps:
# too long for an 8 KiB fine-tuning run that peaks within 50 steps, too short
# for a 2 MiB scratch run. The alternative, cooling the learning rate down
# before every candidate stopping point, needs a branch of training per
# evaluation; the average costs one lerp per step and is ready at every
# evaluation.
EMA_GAMMA = 6.94


def ema_decay(step: int, gamma: float = EMA_GAMMA) -> float:
    return (1.0 - 1.0 / step) ** (gamma + 1.0) if step > 0 else 0.0


def batch_for(data_tokens: int | None) -> int:
    """Sequences per step: 32 up to 1 MB of D_F, 64 up to 8 MB, 128 beyond
    and for pre-training."""
    if data_tokens is None or data_tokens > 8 * 2**20:
        return 128
    return 32 if data_tokens <= 2**20 else 64


def eval_interval_for(data_tokens: int, batch: int, ctx: int = 256) -> int:
    """Regular evaluations about every half epoch, between 25 and 250 steps."""
    return int(np.clip(round(0.5 * data_tokens / (batch * ctx)), 25, 250))


def early_evals(interval: int, first: int = 4) -> list[int]:
    """Log-spaced evaluation steps before the first regular one: interval
    divided by powers of sqrt(2), down to `first`."""
    out, k = set(), 1
    while (s := round(interval / 2 ** (k / 2))) >= first:
        out.add(s)
        k += 1
    return sorted(out)


@dataclass(frozen=True)
class Settings:
    """Every setting that shapes a run (its hash is part of the run id)."""

    lr: float
    batch: int
    eval_interval: int
    max_steps: int  # token budget of a fine-tuning run, in steps: reaching it marks the run capped
    patience: int = 5  # regular evaluations without a new minimum of the smoothed curve
    smooth: float = 0.5  # weight of the newest evaluation in the smoothed selection curve
    warmup: int = 100
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    eval_seqs: int = 256  # selection windows (first half of the validation split)
    report_seqs: int = 1024  # report windows (second half), scored once on the chosen weights
    total_tokens: int | None = None  # pre-training: train exactly this many tokens
    ctx: int = 256

    def to_dict(self) -> dict:
        d = asdict(self)
        d["betas"] = list(d["betas"])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Settings":
        d = dict(d)
        d["betas"] = tuple(d.get("betas", (0.9, 0.95)))
        return cls(**d)


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


def _eval_windows(val: Stream, ctx: int, n: int, half: int) -> np.ndarray:
    """n fixed windows from one half (0: selection, 1: report) of each part of
    a validation stream, split across a mix's parts by weight."""
    w = np.asarray(val.weights, dtype=np.float64) / sum(val.weights)
    counts = np.floor(w * n).astype(int)
    counts[0] += n - counts.sum()
    rows = []
    for a, c in zip(val.parts, counts):
        h = a[: a.size // 2] if half == 0 else a[a.size // 2:]
        rows += [h[s:s + ctx + 1] for s in eval_starts(h.size, ctx, c)]
    return np.stack(rows)


def _stack_windows(members: list[Member], ctx: int, n: int, half: int) -> torch.Tensor:
    rows = [_eval_windows(m.val, ctx, n, half) for m in members]
    k = min(r.shape[0] for r in rows)  # a short split clips every member alike
    return torch.from_numpy(np.stack([r[:k] for r in rows]))


class _Step:
    """One training step (forward and backward). With compile, the first call
    runs the compiled step inside a try, backward included (AOTAutograd
    compiles the backward graph lazily, at the first backward): any compiler
    failure falls back to eager with a warning, so a compiler problem on some
    torch version costs speed, not the grid."""

    def __init__(self, model: EnsembleGPT, compile: bool, amp):
        self.model, self.amp = model, amp
        self.fn = torch.compile(model.member_losses) if compile else model.member_losses
        self.compiled, self.tried = compile, not compile

    def eager(self):
        self.fn, self.compiled = self.model.member_losses, False

    def __call__(self, x, y) -> torch.Tensor:
        if self.tried:
            return self._run(x, y)
        self.tried = True
        try:
            return self._run(x, y)
        except torch.cuda.OutOfMemoryError:
            raise
        except Exception as e:  # noqa: BLE001 - any compiler failure
            warnings.warn(f"torch.compile failed ({type(e).__name__}: {str(e)[:200]}); training eager instead")
            self.model.zero_grad(set_to_none=True)
            self.eager()
            return self._run(x, y)

    def _run(self, x, y) -> torch.Tensor:
        with self.amp:
            losses = self.fn(x, y)
        losses.sum().backward()
        return losses


def _raise_recompile_limit() -> None:
    """Each model size and ensemble width is a new graph; torch's default
    limit (8) would silently fall back to eager in a long grid."""
    import torch._dynamo

    cfg = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(cfg, name):
            setattr(cfg, name, 256)


class ResumeError(ValueError):
    """Resume state that cannot be used (damaged, or from other settings)."""


def train_group(
    cfg: GPTConfig,
    members: list[Member],
    s: Settings,
    device: torch.device | None = None,
    compile: bool | None = None,
    bf16: bool | None = None,
    on_checkpoint: Callable[[Member, int, int, dict], None] | None = None,
    resume_path: Path | None = None,
    deadline: float | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[dict] | None:
    """Train the members as one ensemble; return one result dict per member
    (in order). With a resume_path the group saves its state there every
    RESUME_EVERY_S (pre-training also at each checkpoint) and returns None if
    `deadline` (time.monotonic()) passes before it finishes: calling again
    with the same members resumes it where it stopped.
    compile and bf16 default to on for CUDA (compile from COMPILE_MIN_PARAMS),
    off on CPU, where neither pays (trainer/BENCH.md)."""
    device = torch.device(device) if device is not None else device_default()
    cuda = device.type == "cuda"
    if compile is None:
        compile = cuda and 12 * cfg.n_layer * cfg.d_model**2 >= COMPILE_MIN_PARAMS
    if bf16 is None:
        bf16 = cuda
    pretrain = s.total_tokens is not None
    t0 = time.time()
    M, T, B = len(members), cfg.ctx, s.batch

    model = EnsembleGPT(cfg, [m.seed for m in members])
    for i, m in enumerate(members):
        if m.init is not None:
            model.load_member(i, m.init)
    model.to(device)
    avg = EnsembleGPT(cfg, [0] * M).to(device).requires_grad_(False)  # the weight average
    avg.copy_from(model)
    best = {n: p.detach().clone() for n, p in avg.named_parameters()}  # averaged weights at each member's best
    opt = AdamW(dict(model.named_parameters()), s.betas, s.weight_decay)
    sampler = Sampler([m.stream for m in members], [m.seed for m in members], T, B, device)
    sel_windows = _stack_windows(members, T, s.eval_seqs, 0).to(device)
    rep_windows = None if pretrain else _stack_windows(members, T, s.report_seqs, 1).to(device)

    if compile:
        _raise_recompile_limit()
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    total_steps = math.ceil(s.total_tokens / (B * T)) if pretrain else s.max_steps
    rec = [
        dict(curve_tokens=[], curve_loss=[], train_loss=[], best=math.inf, best_step=0, smooth=None,
             smooth_best=math.inf, since=0, status=None, reason="", steps=0, report=math.nan)
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
    early = [set(early_evals(e)) for e in every]
    wall_before = 0.0  # seconds spent in earlier, interrupted calls
    resumed_at: list[int] = []
    code_versions = [code_version()]  # the commits that trained the group, in order (one unless resumed by another)
    if resume_path is not None and resume_path.exists():
        r = _load_resume(resume_path, model, avg, best, opt, sampler, device, s, members)
        step, rec, pending_ckpt, active, wall_before = r["step"], r["rec"], r["pending"], r["active"], r["wall_s"]
        best, lr_live, train_sum, train_n = r["best"], r["lr_live"], r["train_sum"], r["train_n"]
        resumed_at = r["resumed_at"] + [step]
        code_versions = list(dict.fromkeys(r["code_versions"] + code_versions))
    train_step = _Step(model, compile, amp)

    def save_resume() -> None:
        if resume_path is None:
            return
        meta = dict(settings=s.to_dict(), runs=[m.run_id for m in members], rng=sampler.state(), rec=rec,
                    step=step, pending=pending_ckpt, active=active, opt_t=opt.t, code_version=code_version(),
                    code_versions=code_versions, wall_s=wall_before + time.time() - t0, resumed_at=resumed_at)
        st = {f"p.{n}": p.detach() for n, p in model.named_parameters()}
        st.update({f"a.{n}": p.detach() for n, p in avg.named_parameters()})
        st.update({f"b.{n}": v for n, v in best.items()})
        st.update({f"m.{n}": v for n, v in opt.m.items()})
        st.update({f"v.{n}": v for n, v in opt.v.items()})
        st.update({"train_sum": train_sum, "train_n": train_n, "lr_live": lr_live, "meta": json.dumps(meta)})
        atomic_torch_save(st, resume_path)

    @torch.no_grad()
    def losses_of(net: EnsembleGPT, rows: torch.Tensor) -> list[float]:
        out = torch.zeros(rows.shape[0], device=device)
        chunk = max(1, min(rows.shape[1], 2**16 // max(1, rows.shape[0])))
        for i in range(0, rows.shape[1], chunk):
            w = rows[:, i:i + chunk].long()
            with amp:
                out += net.member_losses(w[..., :-1], w[..., 1:]).float() * w.shape[1]
        return (out / rows.shape[1]).tolist()

    def report(js: list[int]) -> None:
        """Score the chosen (best) averaged weights of members at rows js on
        their report windows, in one batched pass."""
        net = EnsembleGPT(cfg, [0] * len(js)).to(device).requires_grad_(False)
        with torch.no_grad():
            for n, p in net.named_parameters():
                p.copy_(best[n][js])
        vals = losses_of(net, rep_windows[[active[j] for j in js]])
        for j, v in zip(js, vals):
            rec[active[j]]["report"] = v

    def record(j: int, tokens: int, val: float, tl: float, regular: bool) -> None:
        i = active[j]
        r = rec[i]
        r["steps"] = step
        r["curve_tokens"].append(tokens)
        r["curve_loss"].append(val)
        r["train_loss"].append(tl)
        if not math.isfinite(val) or (step > 0 and not math.isfinite(tl)):
            r["status"], r["reason"] = "failed", f"non-finite loss by step {step}"
            return
        if val < r["best"]:
            r["best"], r["best_step"] = val, step
            with torch.no_grad():
                for n, p in avg.named_parameters():
                    best[n][j].copy_(p[j])
        if pretrain or not regular:
            return
        # Stop on the smoothed curve: the raw one jitters by more than the late gains.
        r["smooth"] = val if r["smooth"] is None else (1 - s.smooth) * r["smooth"] + s.smooth * val
        if r["smooth"] < r["smooth_best"]:
            r["smooth_best"], r["since"] = r["smooth"], 0
        else:
            r["since"] += 1
        if r["since"] >= s.patience:
            r["status"] = "ok"
        elif step >= s.max_steps:
            r["status"], r["reason"] = "capped", f"token budget reached at step {step} before early stopping"

    def evaluate(due: list[int], tokens: int) -> None:
        rows = sel_windows[active]
        vals = losses_of(avg, rows)
        tl = (train_sum / train_n.clamp(min=1)).tolist() if step else [math.nan] * len(active)
        stopped = []
        for j in due:
            i = active[j]
            train_sum[j], train_n[j] = 0.0, 0
            if rec[i]["status"] is not None:
                continue
            regular = step % every[i] == 0 and step > 0 or step == total_steps
            record(j, tokens, vals[j], tl[j], regular)
            if rec[i]["status"] is not None:
                lr_live[j] = 0.0
                if rec[i]["status"] != "failed" and not pretrain:
                    stopped.append(j)
        if stopped:
            report(stopped)

    if not resumed_at:  # a group resumed at step 0 has made its step-0 evaluation
        evaluate(list(range(M)), 0)
    last_save = time.monotonic()
    while step < total_steps and active:
        if resume_path is not None:
            if deadline is not None and time.monotonic() > deadline:
                save_resume()
                return None
            if time.monotonic() - last_save > RESUME_EVERY_S:
                save_resume()  # a kill (or a time limit) then loses at most this much training
                last_save = time.monotonic()
        warm = min(1.0, (step + 1) / s.warmup)
        x, y = sampler.next()
        losses = train_step(x, y)
        params = dict(model.named_parameters())
        clip_per_member(params, s.grad_clip)
        opt.step(params, s.lr * warm * lr_live)
        model.zero_grad(set_to_none=True)
        step += 1
        avg.lerp_from(model, 1.0 - ema_decay(step))
        train_sum += losses.detach().float()
        train_n += 1
        tokens = step * B * T

        last = step == total_steps
        due = [j for j, i in enumerate(active) if last or step % every[i] == 0 or step in early[i]]
        if due:
            evaluate(due, tokens)
        if pretrain:  # after the evaluation, so that resume state holds it
            for j, i in enumerate(active):
                while pending_ckpt[i] and tokens >= pending_ckpt[i][0]:
                    p = pending_ckpt[i].pop(0)
                    if on_checkpoint is not None:
                        on_checkpoint(members[i], p, tokens, avg.member_state(j))
                    save_resume()
        if progress is not None and due:
            done = sum(r["status"] is not None for r in rec)
            progress(f"step {step}/{total_steps} done {done}/{M}")
        # Drop stopped members once half of the ensemble has stopped (pre-training
        # members all stop together, at total_steps).
        live = [j for j, i in enumerate(active) if rec[i]["status"] is None]
        if not pretrain and (len(live) <= len(active) // 2 or not live):
            if not live:
                active = []
                break
            keep = torch.tensor(live, device=device)
            model.select(live)
            avg.select(live)
            for n in best:
                best[n] = best[n].index_select(0, keep).contiguous()
            train_step = _Step(model, train_step.compiled, amp)
            opt.select(keep)
            sampler.select(live)
            lr_live = lr_live[keep]
            train_sum, train_n = train_sum[keep], train_n[keep]
            active = [active[j] for j in live]

    if pretrain:
        for i in active:
            if rec[i]["status"] is None:
                rec[i]["status"] = "ok"
    wall = wall_before + time.time() - t0
    results = []
    for k, (m, r) in enumerate(zip(members, rec)):
        ok = r["status"] != "failed"
        # Pre-training reports its final selection loss (it has no optimum to choose).
        loss = (r["curve_loss"][-1] if r["curve_loss"] else math.nan) if pretrain else r["report"]
        results.append(dict(
            run_id=m.run_id,
            status=r["status"] or "failed",
            status_reason=r["reason"],
            loss=loss if ok and math.isfinite(loss) else float("nan"),
            loss_select=r["best"] if ok and math.isfinite(r["best"]) else float("nan"),
            best_step=r["best_step"],
            best_tokens=r["best_step"] * B * T,
            steps=r["steps"],
            tokens_seen=r["steps"] * B * T,
            epochs=(r["steps"] * B * T / m.data_tokens) if m.data_tokens else None,
            curve_tokens=r["curve_tokens"],
            curve_loss=r["curve_loss"],
            train_loss=r["train_loss"],
            batch=B, lr=s.lr, eval_interval=every[k], eval_seqs=int(sel_windows.shape[1]),
            report_seqs=0 if rep_windows is None else int(rep_windows.shape[1]),
            group_size=M, group_wall_s=wall, resumed_at_steps=resumed_at, code_versions=code_versions,
            device=device_name(device),
        ))
    return results


def _load_resume(path: Path, model, avg, best, opt, sampler, device, s: Settings, members: list[Member]) -> dict:
    """Restore a group from its resume file: tensors and JSON only
    (weights_only), and only if it was written for these settings and runs.
    Members dropped before the save are dropped again, so every tensor has
    the saved rows."""
    try:
        st = torch.load(path, map_location=device, weights_only=True)
        meta = json.loads(st["meta"])
    except Exception as e:  # noqa: BLE001 - any damage to the file
        raise ResumeError(f"resume file {path} cannot be read ({type(e).__name__}); delete it to restart "
                          f"this group") from None
    if meta.get("settings") != s.to_dict() or meta.get("runs") != [m.run_id for m in members]:
        raise ResumeError(f"resume file {path} was written for other settings or runs; delete it to restart")
    theirs, mine = meta.get("code_version"), code_version()
    if theirs is not None and not trains_like(theirs):
        # a run is one program's measurement: a group is resumed only by code that trains as the code that began it
        raise ResumeError(f"resume file {path} was written by code {theirs[:12]} and this is {mine[:12]}, which trains "
                          f"differently ({', '.join(TRAINING_MODULES)}): finish the group with that commit checked "
                          f"out, or delete the file to restart it")
    active = meta["active"]
    if len(active) < len(members):
        model.select(active)
        avg.select(active)
        sampler.select(active)
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(st[f"p.{n}"])
        for n, p in avg.named_parameters():
            p.copy_(st[f"a.{n}"])
    opt.m = {n: st[f"m.{n}"] for n in opt.names}
    opt.v = {n: st[f"v.{n}"] for n in opt.names}
    opt.t = meta["opt_t"]
    sampler.set_state(meta["rng"])
    return dict(step=meta["step"], rec=meta["rec"], pending=meta["pending"], active=active, wall_s=meta["wall_s"],
                resumed_at=meta["resumed_at"], code_versions=meta.get("code_versions", [meta.get("code_version")]),
                best={n: st[f"b.{n}"] for n in best}, lr_live=st["lr_live"],
                train_sum=st["train_sum"], train_n=st["train_n"])


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def save_checkpoint(path: Path, cfg: GPTConfig, state: dict, meta: dict) -> None:
    """A single-member checkpoint: config, weights, and where it came from."""
    atomic_torch_save({"config": cfg.to_dict(), "state": state, "meta": meta}, path)


def load_checkpoint(path: Path, cfg: GPTConfig) -> dict[str, torch.Tensor]:
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated or not a checkpoint
        raise ValueError(f"checkpoint {path} cannot be read ({type(e).__name__}): damaged or not a checkpoint") from None
    if not isinstance(ck, dict) or ck.get("config") != cfg.to_dict():
        raise ValueError(f"checkpoint {path} is for model {ck.get('config') if isinstance(ck, dict) else '?'}, "
                         f"not {cfg.to_dict()}")
    return ck["state"]
