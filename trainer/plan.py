"""Packing cells into groups, and what a grid will cost.

Cells of one size, D_F and batch train as one ensemble of at most `pack`
members (scratch and fine-tuned twins side by side: they stop at similar
times). On a CPU the default pack is 4: wider packs measured 27% slower
per token (trainer/BENCH.md); on a GPU 32 small models share the device.

The cost model prices a group at the tokens its runs are expected to train
(`RunLength`: trainer.spec.expected_tokens, or calibrated on a grid's
finished runs) plus their evaluations, at a speed measured by a few-second
probe of the real training step on the machine at hand, in core-seconds
(one thread per process on a CPU).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from trainer.model import SIZES
from trainer.spec import CTX, SCRATCH, Cell, PretrainJob, Spec, SpecError, expected_tokens

CPU_PACK, GPU_PACK = 4, 32


def default_pack(spec: Spec, cuda: bool) -> int:
    return int(spec.train.get("pack", GPU_PACK if cuda else CPU_PACK))


def cell_groups(spec: Spec, pack: int) -> list[list[Cell]]:
    by: dict[tuple, list[Cell]] = {}
    for c in spec.cells:
        by.setdefault((SIZES[c.size], c.size, c.data_tokens, c.settings.batch), []).append(c)
    groups = []
    for key in sorted(by):
        cs = sorted(by[key], key=lambda c: c.run_id)
        groups += [cs[i:i + pack] for i in range(0, len(cs), pack)]
    return groups


def pretrain_groups(spec: Spec, pack: int) -> list[list[PretrainJob]]:
    by: dict[str, list[PretrainJob]] = {}
    for j in spec.pretrain_jobs:
        by.setdefault(j.size, []).append(j)
    return [js[i:i + pack] for size in sorted(by, key=lambda s: SIZES[s]) for js in [by[size]]
            for i in range(0, len(js), pack)]


def flops_per_token(size: str) -> float:
    """Training FLOPs per token: 6N plus causal attention and the output head."""
    L, d = SIZES[size]
    return 6 * 12 * L * d * d + 6 * L * CTX * d + 6 * d * 256


@lru_cache(maxsize=None)
def probe_tokens_per_s(size: str, members: int, batch: int, device: str = "cpu", seconds: float = 1.5) -> float:
    """Training tokens/s of a `members`-wide ensemble of `size`, measured on
    this machine by timing the real step on random bytes (after 2 warm-up steps)."""
    import numpy as np
    import torch

    from trainer.data import Sampler, Stream
    from trainer.model import EnsembleGPT, config_for
    from trainer.optim import AdamW

    cfg = config_for(size)
    dev = torch.device(device)
    model = EnsembleGPT(cfg, list(range(members))).to(dev)
    data = np.random.default_rng(0).integers(0, 256, 1 << 20, dtype=np.uint8)
    sampler = Sampler([Stream([data], [1.0])] * members, list(range(members)), cfg.ctx, batch, dev)
    opt = AdamW(dict(model.named_parameters()))
    lr = torch.full((members,), 1e-3, device=dev)

    def step():
        x, y = sampler.next()
        model.member_losses(x, y).sum().backward()
        opt.step(dict(model.named_parameters()), lr)
        model.zero_grad(set_to_none=True)

    for _ in range(2):
        step()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds or n < 2:
        step()
        n += 1
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return n * members * batch * cfg.ctx / (time.perf_counter() - t0)


def budget_tokens(c: Cell) -> int:
    """A cell's token budget: reaching it marks the run capped."""
    return c.settings.max_steps * c.settings.batch * CTX


@dataclass(frozen=True)
class RunLength:
    """Tokens a run trains before early stopping stops it (or its budget caps it).

    Without coefficients: the rule that sets the token budgets
    (trainer.spec.expected_tokens). ``calibrated`` fits
    log t = a + b log(D_F / 8 KiB) + c [scratch] + d log(N / 1e5) + e, e ~ Normal(0, spread),
    to a grid's finished runs instead, a capped run counting as a lower bound
    (it would have trained longer): on the CPU grids the rule ran short and
    missed the dependence on D_F (0.96, not 0.6; trainer/BENCH.md) and on N.
    """

    coef: tuple[float, float, float, float] | None = None
    runs: int = 0  # finished runs the coefficients were fitted to
    capped: int = 0  # of which capped (lower bounds)
    spread: float = math.nan  # residual sd of log tokens: one run's length is uncertain by exp(spread)

    MIN_RUNS = 20

    def _log_median(self, c: Cell) -> float:
        from trainer.scheduler import n_params

        a, b, s, d = self.coef
        return a + b * math.log(c.data_tokens / 8192) + s * (c.source == SCRATCH) + d * math.log(n_params(c.size) / 1e5)

    def tokens(self, c: Cell) -> float:
        """The median tokens to early stopping, budget aside."""
        if self.coef is None:
            return expected_tokens(c.data_tokens, c.source == SCRATCH)
        return math.exp(self._log_median(c))

    def within_budget(self, c: Cell, done: float = 0.0) -> float:
        """Expected tokens a run still trains, having trained ``done`` without stopping (a saved
        state's progress): E[min(t, budget) | t > done] - done over the spread of run lengths
        (the median cut at the budget, less ``done``, where the rule is not calibrated)."""
        budget = budget_tokens(c)
        if done >= budget:
            return 0.0
        done = max(done, 0.0)
        if self.coef is None:
            return max(min(self.tokens(c), budget) - done, 0.0)
        from scipy.stats import norm

        m, s, lb = self._log_median(c), self.spread, math.log(budget)
        ld = math.log(done) if done > 0 else -math.inf
        alive = norm.sf((ld - m) / s)
        if alive < 1e-300:
            # far beyond any length the law expects (its lognormal tail underflows): a conservative
            # override, the rest of the budget, not the law's own limit
            return budget - done
        # partial expectation of the lognormal over (done, budget), plus the budget where it is capped
        within = math.exp(m + s * s / 2) * (norm.sf((ld - m - s * s) / s) - norm.sf((lb - m - s * s) / s))
        return (within + budget * norm.sf((lb - m) / s)) / alive - done

    def p_capped(self, c: Cell, done: float = 0.0) -> float | None:
        """Probability that the run reaches its token budget before early stopping, given it has
        trained ``done`` tokens without stopping (None uncalibrated)."""
        if self.coef is None:
            return None
        from scipy.stats import norm

        m, s, budget = self._log_median(c), self.spread, budget_tokens(c)
        if done >= budget:
            return 1.0
        ld = math.log(done) if done > 0 else -math.inf
        alive = norm.sf((ld - m) / s)
        return 1.0 if alive < 1e-300 else float(norm.sf((math.log(budget) - m) / s) / alive)

    @classmethod
    def calibrated(cls, out: Path | None) -> "RunLength":
        """Fitted to the runs recorded under ``out``/runs by maximum likelihood on log tokens, a
        capped run's tokens a lower bound (a Tobit regression: dropping capped runs, as least
        squares on the others would, leaves out the longest runs and biases lengths short); the
        default rule where the runs are too few (under ``MIN_RUNS``, or under 6 not capped) or
        too alike."""
        from trainer.scheduler import read_record

        rows = []
        for path in sorted(Path(out, "runs").glob("*.json")) if out is not None else []:
            rec = read_record(path)
            if rec is None or rec["result"]["status"] not in ("ok", "capped") or not rec["result"].get("curve_tokens"):
                continue
            c = rec["cell"]
            rows.append(([1.0, math.log(c["data_tokens"] / 8192), float(c["source"] == SCRATCH),
                          math.log(rec["n_params"] / 1e5)], math.log(rec["result"]["curve_tokens"][-1]),
                         rec["result"]["status"] == "capped"))
        if len(rows) < cls.MIN_RUNS:
            return cls()
        X, y = np.array([r[0] for r in rows]), np.array([r[1] for r in rows])
        capped = np.array([r[2] for r in rows])
        # one size, one D_F, one kind, or too few uncapped runs to measure a spread: nothing to fit
        if (~capped).sum() < X.shape[1] + 2 or np.linalg.matrix_rank(X[~capped]) < X.shape[1]:
            return cls()
        fitted = censored_least_squares(X, y, capped)
        if fitted is None:
            return cls()
        return cls(tuple(float(v) for v in fitted[0]), len(rows), int(capped.sum()), fitted[1])

    def describe(self) -> str:
        if self.coef is None:
            return "run lengths from the rule that sets the token budgets (too few finished runs here to calibrate it)"
        a, b, s, d = self.coef
        return (f"run lengths calibrated on {self.runs} finished runs here ({self.capped} capped, as lower bounds): "
                f"tokens ~ D_F^{b:.2f} N^{d:.2f}, from scratch {math.exp(s):.2f}x fine-tuned; one run's length "
                f"within a factor {math.exp(self.spread):.2f} (1 sd)")


def censored_least_squares(X: np.ndarray, y: np.ndarray, lower: np.ndarray) -> tuple[np.ndarray, float] | None:
    """Maximum likelihood of y = X coef + Normal(0, sd) where rows ``lower`` only bound y from
    below; returns (coef, sd), or None where the fit fails (a non-finite answer, or a spread
    that collapsed to nothing). Least squares on the exact rows starts it."""
    from scipy.optimize import minimize
    from scipy.stats import norm

    exact = ~lower
    coef0 = np.linalg.lstsq(X[exact], y[exact], rcond=None)[0]
    r0 = y[exact] - X[exact] @ coef0
    sd0 = max(float(np.sqrt(r0 @ r0 / max(exact.sum() - X.shape[1], 1))), 1e-3)
    if not lower.any():
        return coef0, sd0

    def nll(theta):
        coef, log_sd = theta[:-1], theta[-1]
        z = (y - X @ coef) / math.exp(log_sd)
        return -(norm.logpdf(z[exact]).sum() - exact.sum() * log_sd + norm.logsf(z[lower]).sum())

    theta = minimize(nll, np.r_[coef0, math.log(sd0)], method="BFGS").x
    if not np.all(np.isfinite(theta)) or theta[-1] < math.log(1e-3):
        return None
    return theta[:-1], float(math.exp(theta[-1]))


def group_seconds(cells: list[Cell], speed: float, length: RunLength = RunLength(), done: float = 0.0) -> float:
    """Seconds for one group: its longest expected run at the group's width
    (stopped members leave as it thins, so charge at least the mean), plus
    evaluations: a forward pass costs about a third of a training step.
    ``done``: tokens per member its saved state has trained already."""
    st = cells[0].settings
    per_step = st.batch * CTX
    runs = [length.within_budget(c, done) for c in cells]
    train = max(max(runs), sum(runs) / len(runs)) * len(cells)
    n_evals = max(runs) / per_step / st.eval_interval + 8
    evals = len(cells) * (n_evals * st.eval_seqs + st.report_seqs) * CTX / 3
    return (train + evals) / speed


def pretrain_seconds(jobs: list[PretrainJob], speed: float) -> float:
    st = jobs[0].settings
    n_evals = jobs[0].tokens / (st.batch * CTX) / st.eval_interval + 12
    return len(jobs) * (jobs[0].tokens + n_evals * st.eval_seqs * CTX / 3) / speed


def check_budgets(spec: Spec) -> None:
    """Refuse a spec whose token budget cannot reach early stopping for some
    cell: the budget must cover 1.5x the expected tokens to stop."""
    for c in spec.cells:
        need = 1.5 * expected_tokens(c.data_tokens, c.source == SCRATCH)
        have = budget_tokens(c)
        if have < need:
            raise SpecError(f"{c.run_id}: max_steps {c.settings.max_steps} gives {have:.3g} tokens, below the "
                            f"{need:.3g} this cell needs to reach early stopping; raise [train].max_steps or drop it "
                            f"for [train].budget")


def check_sizes(spec: Spec, manifest: dict) -> None:
    """Refuse a spec whose corpora are missing from a corpus manifest or
    whose D_F exceeds a target's train split."""
    dists = manifest["distributions"]
    missing = sorted(spec.corpora_needed() - set(dists))
    if missing:
        raise SpecError(f"corpora {', '.join(missing)} are not in the corpus build (has: {', '.join(sorted(dists))})")
    for t in spec.targets:
        n = dists[t]["splits"]["train"]["bytes"]
        big = max(c.data_tokens for c in spec.cells if c.target == t)
        if big > n:
            raise SpecError(f"D_F={big} exceeds the {n} bytes of {t}/train")


def estimate(pending_pre, pending_cells, device: str = "cpu", length: RunLength = RunLength(),
             done: list[float] | None = None) -> dict:
    """Core-seconds (device-seconds on a GPU) for the given pending groups,
    with speeds probed on this machine; ``done``: tokens per member each cell
    group's saved state has trained (0 for a group starting afresh)."""
    done = done or [0.0] * len(pending_cells)
    pre = sum(pretrain_seconds(g, probe_tokens_per_s(g[0].size, len(g), g[0].settings.batch, device))
              for g in pending_pre)
    runs = sum(group_seconds(g, probe_tokens_per_s(g[0].size, len(g), g[0].settings.batch, device), length, d)
               for g, d in zip(pending_cells, done))
    return dict(pretrain_s=pre, runs_s=runs, total_s=pre + runs)
