"""Which runs next: Bayesian experimental design from the draws a fit already has.

``next_runs(fit, candidates, target=..., budget=...)`` picks, from a table of
candidate runs with a cost each (docs/loss_grid.md, "The candidates table"),
the batch that is expected to sharpen ``target`` most per unit of cost, and
writes it as a trainer spec (``write_spec``).

Targets (``parse_target``; written ``name[:key=value,...]``):

- ``multiplier:N=..,D_F=..[,pair=..]``: the effective data multiplier
  (D_F + D_T) / D_F at (N, D_F); ``D_T:N=..,D_F=..`` the data transferred;
- a parameter of the fit, e.g. ``beta:pair=text->python``, ``G:pair=..``,
  ``alpha_N:target=python``;
- ``regret``: the allocation decision of ``recommend`` (its budget and prices
  given as ``decision=``): the criterion is the expected regret of the Bayes
  choice, i.e. the expected value of the runs' information for that decision.

Method (preposterior analysis by importance weighting; no refit):

1. M simulated worlds: each picks a posterior draw theta_m and simulates the
   outcome of every candidate from the fit's own likelihood (Student-t or
   normal noise on log-loss at the law's prediction, the noise scale of the
   run's kind). The same worlds serve every candidate (common random numbers),
   so candidates are compared on the same simulated futures.
2. In world m, the posterior after a batch B is approximated by the existing
   S draws reweighted by the likelihood of B's simulated outcomes:
   w_s ~ prod_{c in B} p(y_mc | theta_s) (self-normalised importance weights,
   the posterior as proposal).
3. The criterion is the mean over worlds of the reweighted posterior variance
   of the target (on the log scale when the target is positive in every draw;
   bias-corrected for the weights' effective sample size), or of the regret.
4. Greedy batch: repeatedly add the affordable candidate (or, with
   lookahead, pair) with the largest expected reduction per unit cost,
   conditioning on the runs already chosen (their simulated outcomes reweight
   jointly with the new one's), until the budget is spent or nothing helps.

The approximation: (a) the posterior draws stand in for the posterior after
the new runs; this is exact as S grows but degrades when the new runs are so
informative that few draws keep weight (the table reports the effective
number of draws; below ~30 the expected variance is too optimistic);
(b) M worlds give a Monte Carlo estimate (its standard error is reported);
(c) greedy selection is not the optimal batch: runs that inform the target
only together (a scratch run and its fine-tuned twin, when neither law is
known) are missed one at a time, which ``lookahead=2`` (pairs) addresses;
(d) where the model has a shared effect per pre-training run, a candidate
from a pre-training run the fit has seen carries that run's effect in each
draw; one from a new pre-training run gets its effect folded into its noise,
so two candidates sharing a new pre-training run count as more independent
than they are.

From the prior alone (``prior_fit``, a first batch with no runs yet) the
reweighting fails: one run is so informative against the prior that a few
draws take all the weight in every world. There the default is the
Bayes-linear engine (``LinearPreposterior``, ``method="linear"``): target and
outcomes treated as jointly Gaussian with the draws' covariance. Its expected
variance is that of the best *linear* estimate of the target from the
outcomes, which is never below the Bayes posterior's: for a nonlinear law it
understates what the runs will teach (a conservative figure), while still
ranking runs by how much their outcomes co-vary with the target.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.special import gammaln, logsumexp

import loss_grid as lg
from bayes_transfer.allocate import resolve_pair
from bayes_transfer.atomic import atomic_write
from bayes_transfer import laws
from bayes_transfer import quantities as q
from bayes_transfer.design_io import (
    COSTS,
    candidate_predictions,
    check_domain,
    flat_draws,
    load_candidates,
    prior_fit,
    run_spec,
    spec_base,
)

__all__ = ["COSTS", "LinearPreposterior", "NextRuns", "Preposterior", "Target", "load_candidates", "next_runs", "parse_target",
           "prior_fit", "run_spec"]

VARIANCE_TARGETS = ("multiplier", "D_T")
DECISION_TARGET = "regret"
MIN_ESS = 30


@dataclass(frozen=True)
class Target:
    """What the runs should sharpen: a name and where (N, D_F, pair, group)."""

    name: str
    N: float | None = None
    D_F: float | None = None
    pair: str | None = None
    group: str | None = None  # a target distribution, for per-target parameters

    def __str__(self) -> str:
        keys = [f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                for k, v in (("N", self.N), ("D_F", self.D_F), ("pair", self.pair), ("target", self.group))
                if v is not None]
        return self.name + (":" + ",".join(keys) if keys else "")


def parse_target(text) -> Target:
    """``"multiplier:N=3e5,D_F=1e5,pair=text->python"`` -> Target (a Target passes through)."""
    if isinstance(text, Target):
        return text
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"target must be a name like 'multiplier:N=3e5,D_F=1e5', got {text!r}")
    name, _, rest = text.strip().partition(":")
    kw = {}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = part.partition("=")
        if not eq:
            raise ValueError(f"target {text!r}: {part!r} is not key=value")
        key = key.strip()
        if key in ("N", "D_F"):
            try:
                kw[key] = float(value)
            except ValueError:
                raise ValueError(f"target {text!r}: {key}={value!r} is not a number") from None
        elif key in ("pair", "target"):
            kw["pair" if key == "pair" else "group"] = value.strip()
        else:
            raise ValueError(f"target {text!r}: unknown key {key!r}; expected N, D_F, pair, target")
    return Target(name.strip(), **kw)


# ---------------------------------------------------------------- what the target is, per draw


def target_draws(fit, target: Target, decision: dict | None = None):
    """(values per draw, scale) for a variance target; (loss per draw x plan, 'loss') for 'regret'."""
    if target.name in VARIANCE_TARGETS:
        if laws.of(fit).kind != "transfer":
            raise ValueError(f"target {target.name!r} needs a 'transfer' fit; this fit is {fit.law!r}")
        if target.N is None or target.D_F is None:
            raise ValueError(f"target {target.name!r} needs N= and D_F= (e.g. '{target.name}:N=3e5,D_F=1e5')")
        fn = q.effective_multiplier if target.name == "multiplier" else q.transferred_data
        values = flat_draws(fn(fit, target.N, target.D_F, pair=resolve_pair(fit, target.pair)))
    elif target.name == DECISION_TARGET:
        from bayes_transfer.allocate import recommend

        if not decision:
            raise ValueError("target 'regret' needs the decision: budget and prices for recommend (decision=...)")
        rec = recommend(fit, **decision)
        if rec.surface is None:
            raise ValueError("target 'regret' needs a decision between two resources: price a second one "
                             "(cost_params for a transfer fit, cost_pretrain for a transfer_gap fit)")
        return rec.surface.transpose(*q.SAMPLE_DIMS, "share").values.reshape(-1, rec.surface.sizes["share"]), "loss"
    else:
        post = fit.posterior
        params = getattr(fit, "params", None) or list(post.data_vars)
        names = [n for n in params if n in post and n != "nu" and not n.endswith(("_mu", "_tau", "_u", "_z"))]
        if target.name not in names:
            raise ValueError(f"unknown target {target.name!r}; expected multiplier, D_T, regret or a parameter "
                             f"of the fit: {', '.join(names)}")
        da = post[target.name]
        if "pair" in da.dims:
            da = da.sel(pair=resolve_pair(fit, target.pair))
        if "target" in da.dims:
            known = [str(t) for t in da["target"].values]
            group = target.group if target.group is not None else (known[0] if len(known) == 1 else None)
            if group not in known:
                raise ValueError(f"parameter {target.name!r} is per target: name one of {known} (target=...)")
            da = da.sel(target=group)
        extra = [d for d in da.dims if d not in q.SAMPLE_DIMS]
        if extra:
            raise ValueError(f"parameter {target.name!r} has dims {extra}: not a scalar target")
        values = flat_draws(da)
    if not np.all(np.isfinite(values)):
        raise ValueError(f"target {target} is not finite in every draw")
    return (np.log(values), "log") if np.all(values > 0) else (values, "linear")


# ---------------------------------------------------------------- the preposterior engine


def _loglik(y, mu, sigma, nu):
    """log p(y | mu, sigma, nu) of log-loss: Student-t (normal where nu is infinite), broadcasting."""
    z = (y - mu) / sigma
    normal = -0.5 * z * z - 0.5 * math.log(2 * math.pi) - np.log(sigma)
    if np.all(np.isinf(nu)):
        return normal
    nu_f = np.where(np.isinf(nu), 1.0, nu)
    t = (gammaln((nu_f + 1) / 2) - gammaln(nu_f / 2) - 0.5 * np.log(nu_f * math.pi) - np.log(sigma)
         - (nu_f + 1) / 2 * np.log1p(z * z / nu_f))
    return np.where(np.isinf(nu), normal, t)


def _weights(logw):
    w = np.exp(logw - logsumexp(logw, axis=1, keepdims=True))
    return w, 1.0 / np.sum(w * w, axis=1)


class Preposterior:
    """Simulated worlds and the reweighted posterior criterion of any batch of candidates.

    ``values``: the target per draw (S,), or a loss matrix (S, A) for a decision;
    ``mu``, ``sigma``: (C, S); ``nu``: (S,). A batch's state is the log weights of
    the draws in each world (M, S); ``criterion(batch)`` returns the per-world
    criterion (M,) and effective sample size (M,).
    """

    def __init__(self, values, mu, sigma, nu, n_worlds=256, seed=0):
        rng = np.random.default_rng(seed)
        self.values, self.mu, self.sigma = np.asarray(values, float), np.asarray(mu, float), np.asarray(sigma, float)
        self.nu = np.broadcast_to(np.asarray(nu, float), self.mu.shape[1:]).copy()
        S = self.mu.shape[1]
        self.n_worlds = n_worlds
        self.world_draw = rng.integers(0, S, n_worlds)
        g = self.world_draw
        nu_g = self.nu[g]
        eps = np.where(np.isinf(nu_g)[:, None], rng.standard_normal((n_worlds, len(self.mu))),
                       rng.standard_t(np.where(np.isinf(nu_g), 1.0, nu_g)[:, None], (n_worlds, len(self.mu))))
        self.y = self.mu[:, g].T + self.sigma[:, g].T * eps  # (M, C)
        self.decision = self.values.ndim == 2
        if self.decision:
            self.best_per_draw = self.values.min(axis=1)
        self._cache = {}

    def loglik(self, c):
        """(M, S): log-likelihood of each world's simulated outcome of candidate c under each draw."""
        return _loglik(self.y[:, c][:, None], self.mu[c][None, :], self.sigma[c][None, :], self.nu[None, :])

    def start(self):
        return np.zeros((self.n_worlds, self.mu.shape[1]))

    def extend(self, state, batch, keep: bool = False):
        """The state after adding ``batch``; ``keep`` caches each run's (M, S) log-likelihood for reuse."""
        for c in batch:
            if keep and c not in self._cache:
                self._cache[c] = self.loglik(c)
            state = state + (self._cache[c] if c in self._cache else self.loglik(c))
        return state

    def per_world(self, logw):
        w, ess = _weights(logw)
        if self.decision:
            expected = w @ self.values  # (M, A): expected loss of each plan in each world
            regret = expected.min(axis=1) - w @ self.best_per_draw
            return regret, ess
        mean = w @ self.values
        var = w @ (self.values ** 2) - mean ** 2
        # reliability-weight correction: the weighted variance of ESS draws is biased low by (1 - sum w^2)
        return np.maximum(var, 0) / np.maximum(1 - 1 / ess, 1e-12), ess

    def criterion(self, batch):
        return self.per_world(self.extend(self.start(), batch))


class LinearPreposterior:
    """The Bayes-linear (Gaussian) preposterior: no weights to collapse, for a first batch from the prior.

    The target (or each plan's loss) and the candidates' log-loss outcomes are
    treated as jointly Gaussian with the mean and covariance of the draws
    (outcome = prediction + noise of the run's variance, Student-t noise by its
    variance). Observing a batch B then leaves the target the variance
    V_tt - V_tB (V_BB + N_B)^-1 V_Bt whatever the outcomes show: exact for a
    linear-Gaussian model, the best linear update otherwise. Reweighting the
    draws fails from the prior: a single run is so informative against it that
    a few draws take all the weight, and the expected variance is then near zero
    for every candidate alike. For the decision target, the expected loss of
    each plan moves by the same linear update of outcomes simulated from that
    Gaussian (common random numbers across batches), and the regret is the
    expected best plan's loss less the mean of each draw's best. The state of a
    batch is the tuple of its runs; the effective sample size is undefined (NaN).
    """

    def __init__(self, values, mu, sigma, nu, n_worlds=256, seed=0):
        self.values = np.asarray(values, float)
        self.decision = self.values.ndim == 2
        T = self.values.reshape(len(self.values), -1)  # (S, A)
        mu, sigma = np.asarray(mu, float), np.asarray(sigma, float)
        nu = np.broadcast_to(np.asarray(nu, float), mu.shape[1:])
        # Student-t noise of scale sigma has variance sigma^2 nu / (nu - 2); nu <= 2.1 is held at 2.1
        held = np.maximum(nu, 2.1)
        inflate = np.ones_like(held)
        finite = np.isfinite(held)
        inflate[finite] = held[finite] / (held[finite] - 2)
        noise = np.mean(sigma ** 2 * inflate[None, :], axis=1)  # (C,)
        cov = np.atleast_2d(np.cov(np.hstack([T, mu.T]), rowvar=False))
        A = T.shape[1]
        self.v_tt, self.v_tc = cov[:A, :A], cov[:A, A:]
        self.K = cov[A:, A:] + np.diag(noise)
        self.t_mean = T.mean(axis=0)
        self.n_worlds = n_worlds
        if self.decision:
            self.best_per_draw = self.values.min(axis=1)
            rng = np.random.default_rng(seed)
            jitter = 1e-10 * np.trace(self.K) / len(self.K)
            L = np.linalg.cholesky(self.K + jitter * np.eye(len(self.K)))
            self.dev = rng.standard_normal((n_worlds, len(self.K))) @ L.T  # (M, C): outcomes less their mean

    def start(self):
        return ()

    def extend(self, state, batch, keep: bool = False):
        return tuple(state) + tuple(batch)

    def per_world(self, state):
        B = list(state)
        nan = np.full(self.n_worlds, np.nan)
        if self.decision:
            if not B:
                return np.full(self.n_worlds, self.t_mean.min() - self.best_per_draw.mean()), nan
            gain = np.linalg.solve(self.K[np.ix_(B, B)], self.v_tc[:, B].T)  # (|B|, A)
            expected = self.t_mean[None, :] + self.dev[:, B] @ gain  # (M, A)
            return expected.min(axis=1) - self.best_per_draw.mean(), nan
        var = self.v_tt[0, 0]
        if B:
            v = self.v_tc[0, B]
            var = var - v @ np.linalg.solve(self.K[np.ix_(B, B)], v)
        return np.full(self.n_worlds, max(float(var), 0.0)), nan

    def criterion(self, batch):
        return self.per_world(self.extend(self.start(), batch))


ENGINES = {"reweight": Preposterior, "linear": LinearPreposterior}


def _prior_criterion(values, decision):
    if decision:
        return float(values.mean(axis=0).min() - values.min(axis=1).mean())
    return float(values.var(ddof=1))


def greedy(engine, costs, budget, lookahead: int = 1):
    """Cost-aware greedy batch; returns rows (index, gain, criterion after, its s.e., ESS) and the final state.

    ``lookahead=2`` also weighs every affordable pair of runs at each step: runs that
    only inform the target together (a scratch run and its fine-tuned twin, from a
    prior that knows neither law) are then found, where one-at-a-time greedy sees
    no gain in either alone. A pair is taken when its gain per cost beats the best
    single run's; it costs O(candidates^2) criterion evaluations per step.
    """
    costs = np.asarray(costs, float)
    M = engine.n_worlds
    state = engine.start()
    keep = lookahead >= 2  # pairs reuse each run's per-world log-likelihood, so only then is it kept
    current = _prior_criterion(engine.values, engine.decision)
    chosen, rows, left = [], [], float(budget)

    def add(c, crit, ess, gain):
        nonlocal state, left, current
        chosen.append(c)
        state = engine.extend(state, [c], keep)
        left -= costs[c]
        current = float(crit.mean())
        rows.append(dict(index=c, expected_gain=gain, criterion_after=current,
                         criterion_se=float(crit.std(ddof=1) / math.sqrt(M)), ess=float(np.median(ess))))

    while True:
        options = [c for c in range(len(costs)) if c not in chosen and costs[c] <= left + 1e-12 * budget]
        if not options:
            break
        single = {}
        for c in options:
            crit, ess = engine.per_world(engine.extend(state, [c], keep))
            single[c] = (current - crit.mean(), crit, ess)
        c = max(options, key=lambda c: single[c][0] / costs[c])
        pair = None
        if lookahead >= 2:
            for i, c1 in enumerate(options):
                for c2 in options[i + 1:]:
                    cost = costs[c1] + costs[c2]
                    if cost > left + 1e-12 * budget:
                        continue
                    crit, ess = engine.per_world(engine.extend(state, [c1, c2], keep))
                    gain = current - crit.mean()
                    if gain / cost > single[c][0] / costs[c] and (pair is None or gain / cost > pair[0]):
                        pair = (gain / cost, c1, c2, crit, ess)
        if pair is not None:
            first, second = sorted(pair[1:3], key=lambda x: -single[x][0])
            add(first, single[first][1], single[first][2], single[first][0])
            add(second, pair[3], pair[4], float(single[first][1].mean() - pair[3].mean()))
            continue
        gain, crit, ess = single[c]
        if gain <= 0:
            break
        add(c, crit, ess, gain)
    return rows, state


def weighted_width(values, logw, prob=0.9):
    """Per world: width of the central ``prob`` interval of the reweighted draws."""
    order = np.argsort(values)
    w, _ = _weights(logw[:, order])
    cdf = np.cumsum(w, axis=1)
    lo = np.array([values[order][min(np.searchsorted(r, (1 - prob) / 2), len(r) - 1)] for r in cdf])
    hi = np.array([values[order][min(np.searchsorted(r, (1 + prob) / 2), len(r) - 1)] for r in cdf])
    return hi - lo


# ---------------------------------------------------------------- the answer


@dataclass
class NextRuns:
    """The chosen runs (``table``), what they are expected to do to the target, and how that was judged."""

    table: pd.DataFrame
    target: str
    scale: str  # "log", "linear" (variance of the target on that scale) or "loss" (regret)
    cost_column: str
    budget: float
    before: float  # variance (or expected regret) now
    after: float  # expected after the batch
    width_before: float | None
    width_after: float | None  # expected 90% interval width (on `scale`) after the batch
    approximation: str
    spec_base: dict = field(default_factory=dict, repr=False)
    notes: list[str] = field(default_factory=list)

    def to_markdown(self) -> str:
        what = "expected regret (loss units)" if self.scale == "loss" else f"posterior variance of {self.scale} target"
        lines = [f"**Next runs for {self.target}**: {len(self.table)} run(s), cost "
                 f"{self.table['cost'].sum():.4g} of budget {self.budget:.4g} ({self.cost_column}).", "",
                 f"{what}: {self.before:.4g} now, {self.after:.4g} expected after the batch."]
        if self.width_before is not None:
            lines.append(f"90% interval width ({self.scale} scale): {self.width_before:.4g} now, "
                         f"{self.width_after:.4g} expected after.")
        cols = [c for c in (lg.SIZE, lg.SOURCE, lg.TARGET, lg.N_PARAMS, lg.DATA_TOKENS, lg.PRETRAIN_TOKENS, lg.SEED,
                            lg.PRETRAIN_SEED, "cost", "expected_gain", "gain_per_cost", "criterion_after", "ess", "extrapolated")
                if c in self.table.columns]
        fmt = self.table[cols].copy()
        for c in ("cost", "expected_gain", "gain_per_cost", "criterion_after", "ess"):
            fmt[c] = fmt[c].map(lambda v: "n/a" if np.isnan(v) else f"{v:.3g}")
        from bayes_transfer.allocate import markdown_table

        lines += ["", markdown_table(fmt), "", f"Method: {self.approximation}"]
        lines += [f"- {n}" for n in self.notes]
        return "\n".join(lines) + "\n"

    def spec(self, name: str = "next_runs") -> str:
        """The chosen runs as one trainer spec (TOML) that ``transfer-train grid run`` accepts as it is."""
        return run_spec(self.table, self.spec_base, name)

    def write_spec(self, out) -> Path:
        """Write the spec to ``out`` atomically."""
        out = Path(out)
        return atomic_write(out, self.spec(out.stem.replace(".", "_") or "next_runs").encode())


APPROXIMATION = {
    "reweight": ("expected reduction of the target's posterior variance (or of the decision's expected regret), "
                 "estimated by importance-reweighting the fit's draws by the likelihood of outcomes simulated "
                 "from its posterior predictive, {worlds} simulated worlds, {draws} draws; batch chosen greedily "
                 "by gain per unit cost, each new run judged jointly with those already chosen. Trustworthy while "
                 "the effective number of draws (ess) stays above ~{min_ess}."),
    "linear": ("expected reduction of the target's variance (or of the decision's expected regret) under a "
               "Bayes-linear approximation: target and outcomes jointly Gaussian with the mean and covariance of "
               "{draws} draws (outcome noise included); batch chosen greedily by gain per unit cost, each new run "
               "judged jointly with those already chosen. Exact for a linear-Gaussian law; for a nonlinear law "
               "it ranks runs by how strongly their outcome co-varies with the target."),
}


def next_runs(fit, candidates, target: str, budget: float = 1.0, *, cost: str = lg.COST_CORE_HOURS,
              decision: dict | None = None, n_worlds: int = 256, max_draws: int = 2000, seed: int = 0,
              lookahead: int | None = None, method: str | None = None,
              allow_unconverged: bool = False) -> NextRuns:
    """Choose the runs, within ``budget`` (in the units of column ``cost``), that best sharpen ``target``.

    ``target``: a Target or its string (module docstring). ``decision``: keyword
    arguments of ``recommend`` for the 'regret' target. ``n_worlds``: simulated
    outcomes per candidate; ``max_draws``: posterior draws used (thinned evenly).
    ``lookahead``: 2 weighs pairs of runs at each greedy step (``greedy``); by
    default 2 for a fit from the prior alone with at most 64 candidates, else 1.
    ``method``: "reweight" (``Preposterior``, the default for a fitted posterior)
    or "linear" (``LinearPreposterior``, the default for a fit from the prior alone).
    """
    target = parse_target(target)
    try:
        budget = float(budget)
    except (TypeError, ValueError):
        raise ValueError(f"budget must be a number, got {budget!r}") from None
    if not math.isfinite(budget) or budget <= 0:
        raise ValueError(f"budget must be a positive amount, got {budget:g}")
    sampled = (getattr(fit, "sampler", None) or {}).get("method")
    from_prior = sampled == "prior"
    method = method or ("linear" if from_prior else "reweight")
    if method not in ENGINES:
        raise ValueError(f"method must be one of {', '.join(ENGINES)}, got {method!r}")
    if sampled == "map":
        raise ValueError("the fit is a MAP point estimate: choosing runs needs posterior draws (fit with NUTS)")
    if not from_prior and not (allow_unconverged or getattr(fit, "allow_unconverged", False) or fit.converged):
        why = fit.diagnostics() if hasattr(fit, "diagnostics") else "see its diagnostics"
        raise ValueError(f"the fit did not converge ({why}); refit, or allow_unconverged=True")
    if allow_unconverged and hasattr(fit, "accept_unconverged"):
        fit = fit.accept_unconverged()
    cands = load_candidates(candidates, cost)
    cheapest = float(cands[cost].min())
    if budget < cheapest:
        raise ValueError(f"budget {budget:g} is below the cheapest candidate ({cheapest:g} {cost})")
    check_domain(fit, cands)
    values, scale = target_draws(fit, target, decision)
    mu, sig, nu, extrap = candidate_predictions(fit, cands)
    S = mu.shape[1]
    keep = np.unique(np.linspace(0, S - 1, min(S, max_draws)).round().astype(int))
    values, mu, sig, nu = values[keep], mu[:, keep], sig[:, keep], nu[keep]
    engine = ENGINES[method](values, mu, sig, nu, n_worlds=n_worlds, seed=seed)
    if lookahead is None:
        lookahead = 2 if from_prior and len(cands) <= 64 else 1
    rows, state = greedy(engine, cands[cost].to_numpy(), budget, lookahead=lookahead)
    chosen = pd.DataFrame(rows)
    table = cands.iloc[chosen["index"]].reset_index(drop=True) if rows else cands.iloc[:0].copy()
    if rows:
        table["cost"] = cands[cost].to_numpy()[chosen["index"]]
        for col in ("expected_gain", "criterion_after", "criterion_se", "ess"):
            table[col] = chosen[col].to_numpy()
        table["gain_per_cost"] = table["expected_gain"] / table["cost"]
        table["cumulative_cost"] = table["cost"].cumsum()
        table["extrapolated"] = extrap[chosen["index"]]
    before = _prior_criterion(values, engine.decision)
    width_before = width_after = None
    if not engine.decision:
        lo, hi = np.quantile(values, [0.05, 0.95])
        width_before = float(hi - lo)
        if not rows:
            width_after = width_before
        elif method == "linear":  # the Gaussian width scales with the standard deviation
            width_after = width_before * math.sqrt(max(rows[-1]["criterion_after"], 0.0) / before)
        else:
            width_after = float(weighted_width(values, state).mean())
    notes = []
    if rows and method == "reweight":
        import arviz as az

        # Pareto k of each world's weights (PSIS): above 0.7 the reweighted draws are unreliable
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            khat = np.asarray(az.psislw(state - state.max(axis=1, keepdims=True), reff=1.0)[1])
        share = float(np.mean(khat > 0.7))
        if share > 0.1:
            notes.append(f"in {share:.0%} of simulated worlds the importance weights have Pareto k > 0.7: the "
                         "expected shrinkage there rests on too few draws; refit after fewer runs")
    if rows and table["ess"].min() < MIN_ESS:
        notes.append(f"the effective number of draws fell to {table['ess'].min():.0f}: the expected shrinkage is "
                     "optimistic; refit after these runs (or fit with more draws) before choosing more, or choose with "
                     "method='linear'")
    if not rows:
        notes.append("no affordable candidate is expected to reduce the target's uncertainty")
    if rows and table["extrapolated"].any():
        notes.append("some chosen runs lie outside the measured ranges: their outcomes are the law's extrapolation")
    if from_prior:
        notes.append("chosen from the prior alone (no runs yet): the gains are only as good as the prior")
    for n in notes:
        warnings.warn(n, stacklevel=2)
    return NextRuns(table=table, target=str(target), scale=scale, cost_column=cost, budget=budget, before=before,
                    after=rows[-1]["criterion_after"] if rows else before, width_before=width_before,
                    width_after=width_after,
                    approximation=APPROXIMATION[method].format(worlds=n_worlds, draws=len(keep), min_ess=MIN_ESS),
                    spec_base=spec_base(fit), notes=notes)


