"""Whether a posterior can be trusted, and how much of it the data decided.

Convergence is judged on every sampled quantity that varies: r_hat, bulk
and tail ESS, divergences and E-BFMI (tree-depth hits are an efficiency
warning only). ``width_ratio`` compares a posterior's 90% interval with its
prior's: at ``PRIOR_DRIVEN`` or above, the answer is mostly the prior's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import arviz as az
import numpy as np

R_HAT_MAX = 1.01
ESS_MIN = 400  # bulk and tail
BFMI_MIN = 0.3  # E-BFMI below this: the sampler explores the energy poorly
# A posterior whose 90% interval is at least half as wide as its prior's
# (log scale for positive parameters) says mostly what the prior said.
PRIOR_DRIVEN = 0.5


class NotConvergedError(RuntimeError):
    """An answer was asked of a fit whose sampler did not converge."""


@dataclass(frozen=True)
class Diagnostics:
    max_r_hat: float
    min_ess_bulk: float
    divergences: int
    converged: bool
    messages: list[str] = field(default_factory=list)
    min_ess_tail: float = np.nan
    min_bfmi: float = np.nan
    max_treedepth_hits: int = 0

    def __str__(self) -> str:
        head = "converged" if self.converged else "NOT CONVERGED"
        stats = (f"max r_hat {self.max_r_hat:.3f}, min bulk ESS {self.min_ess_bulk:.0f}, min tail ESS "
                 f"{self.min_ess_tail:.0f}, min E-BFMI {self.min_bfmi:.2f}, divergences {self.divergences}")
        return "; ".join([f"{head}: {stats}", *self.messages])


def width_ratio(post: np.ndarray, prior: np.ndarray, share: bool = False) -> float:
    """Width of the posterior's 90% interval over the prior's (log scale for positive values).

    A wide prior can overflow far out (a multiplier beyond 1e308, or under
    1e-308 where it underflows to 0): such draws count as the largest (or
    smallest) float, keeping their rank, so the prior's width is then a lower
    bound and the ratio an upper bound (``overflowed`` says so).
    """
    post, prior = (_clamped(np.asarray(x, float).ravel()) for x in (post, prior))
    if post.size < 2 or prior.size < 2:
        return np.nan
    if not share and (post >= 0).all() and (prior >= 0).all() and (post > 0).any():
        tiny = np.finfo(float).tiny
        post, prior = np.log(np.maximum(post, tiny)), np.log(np.maximum(prior, tiny))
    wp = np.diff(np.quantile(prior, [0.05, 0.95]))[0]
    return float(np.diff(np.quantile(post, [0.05, 0.95]))[0] / wp) if wp > 0 else np.nan


def overflowed(draws: np.ndarray) -> bool:
    """Whether any draw overflowed (is infinite, or an underflowed 0 among positive draws):
    a ``width_ratio`` against them is an upper bound."""
    x = np.asarray(draws, float)
    return bool(np.isinf(x).any() or ((x == 0).any() and (x >= 0).all() and (x > 0).any()))


def _clamped(x: np.ndarray) -> np.ndarray:
    big = np.finfo(float).max
    return np.clip(x[~np.isnan(x)], -big, big)


def diagnose(idata: az.InferenceData, max_tree_depth: int = 10) -> Diagnostics:
    """R-hat, bulk and tail ESS, divergences, E-BFMI and tree-depth hits of a NUTS run,
    judged against the thresholds above."""
    post = idata.posterior
    # every sampled or derived quantity that varies: a fixed one (nu fixed, omega off) has no r_hat
    names = [n for n in post.data_vars if float(post[n].std()) > 0]
    rhat = az.rhat(post[names])
    ess = az.ess(post[names], method="bulk")
    tail = az.ess(post[names], method="tail")
    max_rhat = max(float(rhat[n].max()) for n in names) if names else np.nan
    min_ess = min(float(ess[n].min()) for n in names) if names else np.nan
    min_tail = min(float(tail[n].min()) for n in names) if names else np.nan
    stats = idata.sample_stats
    div = int(stats["diverging"].sum())
    bfmi = float(np.min(az.bfmi(idata))) if "energy" in stats else np.nan
    hits = int((stats["n_steps"] >= 2 ** max_tree_depth - 1).sum()) if "n_steps" in stats else 0
    msgs = []
    if not max_rhat <= R_HAT_MAX:
        worst = max(names, key=lambda n: float(rhat[n].max()))
        msgs.append(f"r_hat {max_rhat:.3f} > {R_HAT_MAX} (worst: {worst}): chains disagree, run longer or check the model")
    if not min_ess >= ESS_MIN:
        worst = min(names, key=lambda n: float(ess[n].min()))
        msgs.append(f"bulk ESS {min_ess:.0f} < {ESS_MIN} (worst: {worst}): too few effective draws")
    if not min_tail >= ESS_MIN:
        worst = min(names, key=lambda n: float(tail[n].min()))
        msgs.append(f"tail ESS {min_tail:.0f} < {ESS_MIN} (worst: {worst}): interval ends are unreliable")
    if div:
        msgs.append(f"{div} divergent transition(s): the posterior geometry defeated the sampler, intervals are suspect")
    if np.isfinite(bfmi) and bfmi < BFMI_MIN:
        msgs.append(f"E-BFMI {bfmi:.2f} < {BFMI_MIN}: the sampler explored the energy poorly (heavy tails or a funnel)")
    converged = not msgs
    if hits:  # an efficiency warning: the draws are still valid
        msgs.append(f"{hits} draw(s) hit the maximum tree depth {max_tree_depth}: sampling was slow, not wrong")
    return Diagnostics(max_rhat, min_ess, div, converged, msgs, min_tail, bfmi, hits)
