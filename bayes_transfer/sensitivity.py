"""How much the headline numbers owe to the priors: refit with every law prior
twice as wide and set the two answers side by side."""

from __future__ import annotations

import warnings

import numpy as np
import numpyro.distributions as dist
import pandas as pd

from bayes_transfer import laws
from bayes_transfer import quantities as q
from bayes_transfer.fit import Fit, fit as fit_law
from bayes_transfer.priors import default_priors

WIDEN = 2.0


def widened(prior, factor: float = WIDEN):
    """``prior`` made ``factor`` times as wide on the scale it is drawn on: the
    log-sd of a LogNormal, the scale of a (Half)Normal; a Beta keeps its mean
    with its concentration divided by ``factor``. Fixed numbers stay fixed."""
    if not isinstance(prior, dist.Distribution):
        return prior
    if isinstance(prior, dist.LogNormal):
        return dist.LogNormal(prior.loc, prior.scale * factor)
    if isinstance(prior, dist.Normal):
        return dist.Normal(prior.loc, prior.scale * factor)
    if isinstance(prior, dist.HalfNormal):
        return dist.HalfNormal(prior.scale * factor)
    if isinstance(prior, dist.Beta):
        return dist.Beta(prior.concentration1 / factor, prior.concentration0 / factor)
    raise ValueError(f"no rule to widen a {type(prior).__name__} prior")


def law_sites(fit: Fit) -> list[str]:
    """The sites of the fit's law (its scratch form included), not its noise or spreads."""
    return [s.name for s in laws.sites_of(fit.law, q.scratch_form(fit) if laws.of(fit).kind == "transfer" else None)]


def wide_target_accept(target_accept: float) -> float:
    """The refit's NUTS acceptance target: half the fit's shortfall from 1 (0.9 -> 0.95, 0.95 ->
    0.975), at most 0.99 unless the fit's own is higher. Wider priors reach into the laws' flat,
    curved corners: at the fit's own 0.9 the wider-prior refits of the main and two-source CPU
    grids each had a divergent transition."""
    return max(target_accept, min(0.99, (1.0 + target_accept) / 2))


def wide_fit(fit: Fit, factor: float = WIDEN, **sampler) -> Fit:
    """``fit`` refitted, same grid and sampler settings but a finer step (``wide_target_accept``),
    with every law prior ``factor`` times as wide. ``sampler``: ``fit`` settings to change (more
    ``warmup`` and ``draws`` where the wider posterior is harder to sample)."""
    spec = laws.of(fit)
    scratch_law = fit.config.get("scratch_law", "kaplan")
    defaults = default_priors(fit.law, scratch_law)
    priors = {name: widened(defaults[name], factor) for name in law_sites(fit)}
    kw = fit.refit_settings()
    kw["target_accept"] = wide_target_accept(kw["target_accept"])
    kw.update(sampler)
    if spec.kind == "transfer":
        kw.update(scratch_law=scratch_law, ossification=bool(fit.config["ossification"]))
    if spec.pretrain_axis:
        kw.update(n_params=fit.config["n_params"])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="fit of law .* did not converge")  # said in the table's caption
        return fit_law(fit.grid, fit.law, priors=priors, **kw)


def _interval(values: np.ndarray, prob: float) -> tuple[float, float, float]:
    lo, med, hi = np.quantile(values, [(1 - prob) / 2, 0.5, (1 + prob) / 2])
    return float(med), float(lo), float(hi)


# The transfer law's headline parameters (omega has its own prior-driven label
# on every ossification probability); every other law reports all of its own.
HEADLINE = {"transfer": ("alpha", "beta", "k")}


def headline_draws(fit: Fit, allow_unconverged: bool = False) -> dict[str, np.ndarray]:
    """Draws of the headline numbers of a fit: its law's parameters per group
    and, for the transfer law, the effective-data multiplier at the centre."""
    q.checked(fit, allow_unconverged)
    spec = laws.of(fit)
    out = {}
    for name in HEADLINE.get(fit.law, spec.params):
        da = fit.posterior[name]
        groups = [d for d in da.dims if d not in ("chain", "draw")]
        if not groups:
            out[name] = da.values.ravel()
            continue
        for label in da[groups[0]].values:
            out[f"{name}[{label}]"] = da.sel({groups[0]: label}).values.ravel()
    if spec.kind != "transfer":
        return out
    for pair in q.pairs(fit):
        N, D_F = q.fit_centre(fit)
        out[f"multiplier[{pair}] at N={N:.3g}, D_F={D_F:.3g}"] = \
            q.effective_multiplier(fit, N, D_F, pair=pair, allow_unconverged=True).values.ravel()
    return out


def prior_sensitivity(fit: Fit, prob: float = 0.9, factor: float = WIDEN, **sampler) -> tuple[pd.DataFrame, Fit]:
    """Each headline number (``headline_draws``) under the default priors and under priors ``factor``
    times as wide (``wide_fit``): medians, intervals, and the shift of the median
    in units of the default interval's width (on the log scale: all are
    positive). A shift near 0 and a similar interval: the data decided it.
    Returns the table and the wider-prior fit (check its ``converged``); ``sampler`` goes to
    ``wide_fit``."""
    if fit.point_estimate:
        raise ValueError("prior sensitivity compares posteriors; this fit is a MAP point estimate")
    a = headline_draws(fit)  # the fit's own gate holds
    wide = wide_fit(fit, factor, **sampler)
    b = headline_draws(wide, allow_unconverged=True)  # whether it converged is part of the answer
    rows = []
    for name in a:
        m0, l0, h0 = _interval(a[name], prob)
        m1, l1, h1 = _interval(b[name], prob)
        rows.append({"quantity": name, "median": m0, "lower": l0, "upper": h0,
                     "wide median": m1, "wide lower": l1, "wide upper": h1,
                     "shift / width": abs(np.log(m1 / m0)) / np.log(h0 / l0),
                     "width ratio": np.log(h1 / l1) / np.log(h0 / l0)})
    return pd.DataFrame(rows), wide


__all__ = ["prior_sensitivity", "wide_fit", "widened"]
