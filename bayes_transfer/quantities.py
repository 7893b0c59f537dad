"""Posterior quantities of a fit, at any (N, D_F, p), with extrapolation flagged.

Every function takes a `Fit` and returns an `xarray.DataArray` over
(chain, draw, ...): one value per posterior draw, so any summary (median,
interval, probability) is a reduction over those two dims (see `band`).
N, D_F and p may be scalars or 1-d sequences; a sequence becomes a dimension
of the same name ("N", "D_F", "p") so maps over N x D_F come out of one call.

Each result carries an `extrapolated` boolean coordinate over its input dims
(True where N, D_F or p lies outside the range the grid measured) and an
`extrapolated` attribute (True if any point is); plots and reports mark it.

The laws are evaluated through their one definition in `laws.py` (see
docs/laws.md). A fit that did not converge gives no answers here unless
`allow_unconverged=True` (or the fit was accepted with
`Fit.accept_unconverged()`): `NotConvergedError` says why.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from bayes_transfer import laws
from bayes_transfer.diagnostics import PRIOR_DRIVEN, NotConvergedError, overflowed, width_ratio
from loss_grid import SCRATCH, pair_label, split_pair

SAMPLE_DIMS = ("chain", "draw")
# "within 1% of the infinite-data loss" and "at most 10% of that data" (Hernandez et al.)
_NEAR_FLOOR = 0.01
_LOW_DATA_FRACTION = 0.1


def checked(fit, allow_unconverged: bool = False):
    """The fit, if its answers can be trusted or the caller allows it; else NotConvergedError."""
    if allow_unconverged or getattr(fit, "allow_unconverged", False) or fit.converged:
        return fit
    diag = fit.diagnostics() if hasattr(fit, "diagnostics") else "diagnostics failed"
    raise NotConvergedError(f"the {fit.law} fit did not converge ({diag}); its answers are not trustworthy. "
                            "Refit with more warm-up and draws, or pass allow_unconverged=True to use it anyway")


# ---------------------------------------------------------------- inputs


def _axis(values, name: str) -> xr.DataArray:
    """A positive scalar or 1-d sequence as a DataArray (a sequence gets dim `name`)."""
    arr = np.asarray(values, dtype=float)
    if arr.ndim > 1:
        raise ValueError(f"{name} must be a number or a 1-d sequence, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.all(np.isfinite(arr)) or np.any(arr < 0) or (name != "p" and np.any(arr == 0)):
        bound = ">= 0" if name == "p" else "> 0"
        raise ValueError(f"{name} must be finite and {bound}, got {arr.tolist()}")
    if arr.ndim == 0:
        return xr.DataArray(float(arr))
    return xr.DataArray(arr, dims=[name], coords={name: arr})


def scratch_form(fit) -> str:
    """The name of the scratch law the fit's posterior holds (laws.SCRATCH_LAWS)."""
    named = (getattr(fit, "config", None) or {}).get("scratch_law")
    if named:
        return named
    post = fit.posterior
    # the most specific law whose parameters are all there (data_constrained extends chinchilla)
    for law in sorted(laws.SCRATCH_LAWS.values(), key=lambda x: -len(x.params)):
        if all(v in post for v in law.params):
            return law.name
    raise ValueError(f"the fit (law {fit.law!r}) has no scratch-law parameters")


def pairs(fit) -> list[str]:
    """The (source->target) pairs of a transfer or transfer-gap fit."""
    post = fit.posterior
    return [str(p) for p in post["pair"].values] if "pair" in post.dims else []


def select_pair(fit, pair: str | None) -> xr.Dataset:
    """The posterior with scratch params aligned to pairs (dim `pair`, or none if one is named)."""
    post = fit.posterior
    if "pair" not in post.dims:
        raise ValueError(f"the fit (law {fit.law!r}) has no source->target pairs; "
                         "fit a 'transfer' or 'transfer_gap' law on fine-tuned runs")
    if pair is not None:
        known = pairs(fit)
        if pair not in known:
            raise ValueError(f"unknown pair {pair!r}; the fit has {known}")
        post = post.sel(pair=pair)
    if "target" in post.dims:
        # Each pair uses its target's scratch law: vectorised selection along `pair`.
        aligned = {name: da.sel(target=post["pair_target"]).drop_vars("target", errors="ignore")
                   for name, da in post.data_vars.items() if "target" in da.dims}
        post = post.drop_dims("target").assign(aligned)
    return post


def select_target(fit, target: str | None) -> xr.Dataset:
    """The posterior of one target (all targets when `target` is None)."""
    post = fit.posterior
    if target is not None:
        if "target" not in post.dims:
            raise ValueError(f"the fit has no target dimension; drop target={target!r}")
        known = [str(t) for t in post["target"].values]
        if target not in known:
            raise ValueError(f"unknown target {target!r}; the fit has {known}")
        post = post.sel(target=target)
    return post


# ---------------------------------------------------------------- extrapolation


def _range(values) -> tuple[float, float] | None:
    values = np.asarray(values, dtype=float)
    return (float(values.min()), float(values.max())) if values.size else None


def fit_centre(fit) -> tuple[float, float]:
    """(N, D) at the fit's centre: where its priors on loss terms and on D_T / D_F are set."""
    c = fit.config["centre"]
    return float(np.exp(c["log_N0"])), float(np.exp(c["log_D0"]))


def fit_runs(fit) -> pd.DataFrame:
    """The grid's runs the fit describes: a transfer-gap fit is at one model size."""
    runs: pd.DataFrame = fit.grid.runs
    size = (getattr(fit, "config", None) or {}).get("n_params")
    if laws.of(fit).pretrain_axis and size is not None:
        runs = runs[np.isclose(runs["n_params"], float(size), rtol=1e-9)]
    return runs


def grid_ranges(fit, pair: str | None = None, finetuned: bool = True) -> dict:
    """The measured ranges of N, D_F and p: fine-tuned runs (of `pair`) or scratch runs."""
    runs = fit_runs(fit)
    if finetuned:
        rows = runs[runs["source"] != SCRATCH]
        if pair is not None:
            source, target = split_pair(pair)
            rows = rows[(rows["source"] == source) & (rows["target"] == target)]
    else:
        rows = runs[runs["source"] == SCRATCH]
    out = {"N": _range(rows["n_params"]), "D_F": _range(rows["data_tokens"])}
    if "pretrain_tokens" in rows:
        out["p"] = _range(rows["pretrain_tokens"])
    return out


def _flag(result: xr.DataArray, fit, inputs: dict, ranges: dict) -> xr.DataArray:
    """Attach the `extrapolated` coordinate (over the input dims) and attribute."""
    outside = xr.DataArray(False)
    for name, values in inputs.items():
        lim = ranges.get(name)
        if values is None or lim is None:
            continue
        lo, hi = lim
        tol = 1e-9 * max(abs(hi), 1.0)
        outside = outside | (values < lo - tol) | (values > hi + tol)
    outside = outside.transpose(*[d for d in result.dims if d in outside.dims])
    result = result.assign_coords(extrapolated=outside)
    result.attrs["extrapolated"] = bool(outside.any())
    result.attrs["grid_ranges"] = str({k: v for k, v in ranges.items() if v is not None})
    return result


def _finish(result: xr.DataArray, name: str, units: str, long_name: str) -> xr.DataArray:
    order = [d for d in SAMPLE_DIMS + ("pair", "target", "N", "D_F", "p") if d in result.dims]
    result = result.transpose(*order, ...)
    result.name = name
    result.attrs.update(units=units, long_name=long_name)
    return result


# ---------------------------------------------------------------- quantities


def transferred_data(fit, N, D_F, pair: str | None = None, *, allow_unconverged: bool = False) -> xr.DataArray:
    """D_T: the data pre-training is worth, in target data (bytes on the trainer's grids); negative = ossification.

    From a 'transfer' fit: D_T = k D_F^alpha N^beta - omega D_F, per posterior draw.
    With `pair` None and several pairs the result has a `pair` dim.
    """
    if laws.of(fit).kind != "transfer":
        raise ValueError(f"transferred_data needs a 'transfer' fit (k, alpha, beta); this fit is {fit.law!r}")
    post = select_pair(checked(fit, allow_unconverged), pair)
    n, d = _axis(N, "N"), _axis(D_F, "D_F")
    result = _finish(laws.transferred(n, d, post), "D_T", fit.grid.data_label, "data transferred by pre-training")
    return _flag(result, fit, {"N": n, "D_F": d}, grid_ranges(fit, pair))


def effective_multiplier(fit, N, D_F, pair: str | None = None, *, allow_unconverged: bool = False) -> xr.DataArray:
    """(D_F + D_T) / D_F: how many times the fine-tuning data pre-training is worth."""
    d_t = transferred_data(fit, N, D_F, pair, allow_unconverged=allow_unconverged)
    result = (_axis(D_F, "D_F") + d_t) / _axis(D_F, "D_F")
    result.attrs = dict(d_t.attrs)
    return _finish(result, "multiplier", "1", "effective data multiplier (D_F + D_T) / D_F")


def gap_multiplier(fit, p, pair: str | None = None, *, allow_unconverged: bool = False) -> xr.DataArray:
    """Under a 'transfer_gap' fit: how many times its fine-tuning data pre-training on
    ``p`` tokens is worth, D_E / D_F = (C_0 / (A_p p^-alpha_p + G))^(1 / alpha_f).

    The law makes it the same at every D_F. ``p = inf`` gives the most any
    amount of this pre-training can be worth, (C_0 / G)^(1 / alpha_f): the
    transfer gap G as a multiplier, comparable across targets (G itself
    carries each target's units and exponent). Below 1: pre-training hurts.
    """
    if laws.of(fit).kind != "gap":
        raise ValueError(f"gap_multiplier needs a 'transfer_gap' fit; this fit is {fit.law!r}")
    arr = np.asarray(p, dtype=float)
    if arr.ndim > 1 or arr.size == 0 or np.any(np.isnan(arr)) or np.any(arr <= 0):
        raise ValueError(f"p must be a number or a 1-d sequence of numbers > 0 (inf allowed), got {arr.tolist()}")
    pp = xr.DataArray(float(arr)) if arr.ndim == 0 else xr.DataArray(arr, dims=["p"], coords={"p": arr})
    post = select_pair(checked(fit, allow_unconverged), pair)
    result = (post["C_0"] / (post["A_p"] * pp ** -post["alpha_p"] + post["G"])) ** (1.0 / post["alpha_f"])
    result = _finish(result, "gap_multiplier", "1", "effective data multiplier D_E / D_F at pre-training amount p")
    return _flag(result, fit, {"p": pp}, grid_ranges(fit, pair))


def ossification_probability(fit, N, D_F, pair: str | None = None, p=None, *,
                             allow_unconverged: bool = False) -> xr.DataArray:
    """Posterior probability that pre-training hurts at (N, D_F): a reduction over draws.

    'transfer' fit: P(D_T < 0). 'transfer_gap' fit (needs p > 0): P(L(p, D_F) > L(0, D_F)).
    """
    kw = dict(pair=pair, allow_unconverged=allow_unconverged)
    kind = laws.of(fit).kind
    if kind == "transfer":
        d_t = transferred_data(fit, N, D_F, **kw)
        worse, attrs, extrap = d_t < 0, dict(d_t.attrs), d_t["extrapolated"]
    elif kind == "gap":
        if p is None or np.any(np.asarray(p, dtype=float) <= 0):
            raise ValueError("ossification under a 'transfer_gap' fit needs pre-training tokens p > 0")
        with_p = predicted_loss(fit, N, D_F, p=p, **kw)
        without = predicted_loss(fit, N, D_F, p=0.0, **kw)
        worse = with_p > without.drop_vars("extrapolated")
        attrs, extrap = dict(with_p.attrs), with_p["extrapolated"]
    else:
        raise ValueError(f"ossification needs a 'transfer' or 'transfer_gap' fit; this fit is {fit.law!r}")
    prob = worse.mean(SAMPLE_DIMS).assign_coords(extrapolated=extrap)
    prob.name = "p_ossification"
    prob.attrs = attrs
    prob.attrs.update(units="1", long_name="P(pre-training worse than scratch)")
    return prob


def data_to_converge(fit, N, target: str | None = None, *, allow_unconverged: bool = False) -> xr.DataArray:
    """D(N): data a size-N model needs (scratch law) to get within 1% of its infinite-data loss."""
    post = select_target(checked(fit, allow_unconverged), target)
    n = _axis(N, "N")
    result = laws.scratch(scratch_form(fit)).data_to_converge(n, post, _NEAR_FLOOR)
    result = _finish(result, "D_N", fit.grid.data_label, "data to reach 1% of the infinite-data loss")
    return _flag(result, fit, {"N": n}, grid_ranges(fit, finetuned=False))


def low_data_boundary(fit, N, target: str | None = None, *, allow_unconverged: bool = False) -> xr.DataArray:
    """The largest D_F of the low-data regime at size N: 0.1 D(N) (where the transfer law holds)."""
    result = _LOW_DATA_FRACTION * data_to_converge(fit, N, target, allow_unconverged=allow_unconverged)
    result.attrs["long_name"] = "low-data regime boundary 0.1 D(N)"
    result.name = "D_low"
    return result


def law_loss(fit, post, N, f, p=None):
    """The fitted law's loss on the draws ``post`` at (N, f[, p]) (any broadcastable inputs).

    'transfer': p None is the fine-tuned loss, p = 0 the scratch loss;
    'transfer_gap': p >= 0 (0 = from scratch), N unused; 'rectified': f only;
    scratch laws: N and f.
    """
    law = laws.of(fit)
    if law.pretrain_axis:
        return laws.gap_loss(p, f, post)
    if not law.has_scratch:
        return laws.rectified(f, post["B"], post["D_l"], post["beta"], post["E"])
    form = laws.scratch(scratch_form(fit))
    if law.finetuned and p is None:
        return form.loss(N, f + laws.transferred(N, f, post), post)
    return form.loss(N, f, post)


def predicted_loss(fit, N, D_F, p=None, pair: str | None = None, predictive: bool = False,
                   target: str | None = None, seed: int = 0, *, allow_unconverged: bool = False) -> xr.DataArray:
    """Loss (in the grid's unit) at (N, D_F[, p]) per draw; `predictive` adds the fitted noise.

    - scratch fits: the scratch law of each target (`target` picks one).
    - 'transfer': p=None gives the fine-tuned loss L_scratch(N, D_F + D_T) of each pair;
      p=0 gives the from-scratch loss of the pair's target.
    - 'transfer_gap': p is required (0 = from scratch); the law is at the grid's model size,
      so N only marks extrapolation (N=None: the grid's size).
    - 'rectified': each pair's fine-tuning curve; N only marks extrapolation (N=None: ignored).
    """
    checked(fit, allow_unconverged)
    kind = laws.of(fit).kind
    ranges_ft = None
    if kind == "scratch":
        if pair is not None or p not in (None, 0):
            raise ValueError(f"a {fit.law!r} fit is from scratch only: drop pair / p")
        post = select_target(fit, target)
        n, d = _axis(N, "N"), _axis(D_F, "D_F")
        mu = law_loss(fit, post, n, d)
        inputs, ranges = {"N": n, "D_F": d}, grid_ranges(fit, finetuned=False)
    elif kind == "finetune":
        if p is not None:
            raise ValueError(f"a {fit.law!r} fit has no from-scratch or pre-training-size dependence: drop p")
        post = select_pair(fit, pair)
        d = _axis(D_F, "D_F")
        mu = law_loss(fit, post, None, d)
        n = None if N is None else _axis(N, "N")
        inputs, ranges = {"N": n, "D_F": d}, grid_ranges(fit, pair)
    elif kind == "transfer":
        if p is not None and np.any(np.asarray(p, dtype=float) != 0):
            raise ValueError("a 'transfer' fit has no pre-training-size dependence: "
                             "use p=None (fine-tuned) or p=0 (from scratch)")
        # from scratch, a target may be named instead of a pair
        post = select_target(fit, target) if p is not None and target is not None else select_pair(fit, pair)
        n, d = _axis(N, "N"), _axis(D_F, "D_F")
        mu = law_loss(fit, post, n, d, None if p is None else 0.0)
        inputs = {"N": n, "D_F": d}
        ranges = grid_ranges(fit, pair) if p is None else grid_ranges(fit, finetuned=False)
    else:
        if p is None:
            raise ValueError("a 'transfer_gap' fit needs p (pre-training tokens; 0 = from scratch)")
        post = select_pair(fit, pair)
        d, pp = _axis(D_F, "D_F"), _axis(p, "p")
        mu = law_loss(fit, post, None, d, pp)
        n = None if N is None else _axis(N, "N")
        ranges = grid_ranges(fit, pair)
        # p = 0 is the scratch branch, measured by the scratch runs: not an extrapolation in p
        p_checked = pp.where(pp > 0, ranges["p"][0]) if ranges.get("p") else pp
        inputs = {"N": n, "D_F": d, "p": p_checked}
        ranges_ft = grid_ranges(fit, finetuned=False)
    if ranges_ft is not None and ranges.get("N") is None:
        ranges["N"] = ranges_ft["N"]
    if predictive:
        scratch = kind == "scratch" or (p is not None and np.all(np.asarray(p) == 0))
        mu = _add_noise(mu, _sigma(post, 0 if scratch else -1), post, seed)
    what = "posterior predictive" if predictive else "expected"
    result = _finish(mu, "loss", fit.grid.loss_unit, f"{what} loss")
    return _flag(result, fit, inputs, ranges)


def _sigma(post: xr.Dataset, kind: int) -> xr.DataArray:
    """The noise scale of a run kind: the fit has one per kind (scratch first, then pre-trained)."""
    if "sigma" not in post:
        raise ValueError("the fit has no noise scale `sigma`; posterior-predictive bands need it")
    sigma = post["sigma"]
    extra = [d for d in sigma.dims if d not in SAMPLE_DIMS]
    if extra:
        sigma = sigma.isel({extra[0]: kind if sigma.sizes[extra[0]] > 1 else 0}, drop=True)
    return sigma


def _add_noise(mu: xr.DataArray, sigma: xr.DataArray, post: xr.Dataset, seed: int) -> xr.DataArray:
    """Draw a new observation per draw: Student-t (or normal) noise on log-loss."""
    rng = np.random.default_rng(seed)
    parts = [mu, sigma] + ([post["nu"]] if "nu" in post else [])
    parts = xr.broadcast(*parts)
    shape = parts[0].shape
    noise = rng.standard_t(parts[2].values, size=shape) if len(parts) == 3 else rng.standard_normal(shape)
    return parts[0].copy(data=np.exp(np.log(parts[0].values) + parts[1].values * noise))


def observed_transferred_data(fit, prob: float = 0.9, *, allow_unconverged: bool = False) -> pd.DataFrame:
    """The paper's two-stage points: each fine-tuned run inverted through the scratch law.

    One row per fine-tuned run: D_T median and `prob` interval over the scratch-law
    posterior, and the share of draws where the run's loss lies at or below the
    scratch floor (D_E unbounded, reported, not dropped).
    """
    form = laws.scratch(scratch_form(fit))
    runs = fit_runs(fit)
    ft = runs[runs["source"] != SCRATCH].reset_index(drop=True)
    post = checked(fit, allow_unconverged).posterior
    rows = []
    lo_q, hi_q = (1 - prob) / 2, (1 + prob) / 2
    for _, run in ft.iterrows():
        params = post.sel(target=run["target"]) if "target" in post.dims else post
        d_e = form.invert(float(run["n_params"]), float(run["loss"]), params)
        d_t = (d_e - float(run["data_tokens"])).values.ravel()
        finite = d_t[np.isfinite(d_t)]
        q = np.quantile(finite, [lo_q, 0.5, hi_q]) if finite.size else [np.nan] * 3
        rows.append({"source": run["source"], "target": run["target"],
                     "pair": pair_label(run["source"], run["target"]),
                     "n_params": run["n_params"], "data_tokens": run["data_tokens"],
                     "loss": run["loss"], "D_T_lower": q[0], "D_T_median": q[1], "D_T_upper": q[2],
                     "share_unbounded": 1 - finite.size / d_t.size})
    return pd.DataFrame(rows)


def band(da: xr.DataArray, prob: float = 0.9) -> xr.Dataset:
    """Posterior median, mean and central `prob` interval over (chain, draw)."""
    if not 0 < prob < 1:
        raise ValueError(f"prob must be in (0, 1), got {prob}")
    dims = [d for d in SAMPLE_DIMS if d in da.dims]
    if not dims:
        raise ValueError("band needs a DataArray over (chain, draw)")
    q = da.quantile([(1 - prob) / 2, (1 + prob) / 2], dim=dims)
    out = xr.Dataset({
        "median": da.median(dims),
        "mean": da.mean(dims),
        "lower": q.isel(quantile=0, drop=True),
        "upper": q.isel(quantile=1, drop=True),
    })
    out.attrs = dict(da.attrs, prob=prob)
    return out


# ---------------------------------------------------------------- what the data decided


def prior_view(fit):
    """The same fit with its prior draws in place of the posterior (quantities work on it)."""
    from dataclasses import replace

    import arviz as az

    if getattr(fit, "prior", None) is None:
        raise ValueError("the fit holds no prior draws (refit with this version to get them)")
    return replace(fit, idata=az.InferenceData(posterior=fit.prior), allow_unconverged=True, _diagnostics=None,
                   _lazy={})


def prior_driven(fit, quantity, *args, **kwargs) -> xr.DataArray:
    """Whether ``quantity(fit, *args, **kwargs)`` is decided by the prior, per point.

    True where the posterior's 90% interval is at least ``PRIOR_DRIVEN``
    (a half) as wide as the same quantity's under the prior (log scale for
    positive quantities). The ratio itself is the ``width_ratio`` coordinate;
    ``width_ratio_bound`` is True where the prior's draws overflowed, so the
    ratio is an upper bound (``diagnostics.width_ratio``).
    """
    post = quantity(fit, *args, **kwargs)
    prior = quantity(prior_view(fit), *args, **kwargs)
    dims = [d for d in post.dims if d not in SAMPLE_DIMS]
    stack = (lambda da: da.stack(point=dims).transpose(..., "point")) if dims else (lambda da: da.expand_dims(point=[0]))
    a, b = stack(post), stack(prior)
    pairs = [(a.isel(point=i).values, b.isel(point=i).values) for i in range(a.sizes["point"])]
    ratios = np.array([width_ratio(p, pr) for p, pr in pairs])
    bounds = np.array([overflowed(pr) for _, pr in pairs])
    if not dims:
        return xr.DataArray(bool(ratios[0] >= PRIOR_DRIVEN)).assign_coords(width_ratio=ratios[0],
                                                                          width_ratio_bound=bounds[0])
    per_point = lambda v: xr.DataArray(v, dims=["point"], coords=a["point"].coords).unstack("point")  # noqa: E731
    return per_point(ratios >= PRIOR_DRIVEN).assign_coords(width_ratio=per_point(ratios),
                                                           width_ratio_bound=per_point(bounds))


def posterior_predictive_table(fit, prob: float = 0.9) -> pd.DataFrame:
    """Each fitted run's observed loss against its posterior-predictive median and interval.

    Read from the fit's posterior predictive draws (``Fit.posterior_predictive``);
    ``censored`` runs only bound their loss from above, so for them a
    prediction below the recorded loss is no misfit.
    """
    pp = np.exp(fit.posterior_predictive["log_loss"])
    lo, med, hi = (pp.quantile(x, dim=SAMPLE_DIMS).values for x in ((1 - prob) / 2, 0.5, (1 + prob) / 2))
    runs = fit.grid.runs.set_index("run").loc[pp["run"].values].reset_index()
    censored = pp["run_censored"].values if "run_censored" in pp.coords else np.zeros(len(runs), bool)
    loss = runs["loss"].to_numpy()
    inside = (lo <= loss) & ((loss <= hi) | censored)
    return pd.DataFrame({"source": runs["source"], "target": runs["target"], "n_params": runs["n_params"],
                         "data_tokens": runs["data_tokens"], "loss": loss, "median": med, "lower": lo, "upper": hi,
                         "censored": censored, "inside": inside})


def ossification_prior_driven(fit, N, D_F, pair: str | None = None) -> xr.DataArray:
    """Whether P(ossified) at (N, D_F) is the prior speaking: True where ossification is
    possible (P >= 1%) and the omega that decides it did not narrow against its prior."""
    prob = ossification_probability(fit, N, D_F, pair)
    post = select_pair(fit, pair)
    prior = select_pair(prior_view(fit), pair)
    a, b = (da.transpose(*SAMPLE_DIMS, ...) for da in (post["omega"], prior["omega"]))
    cols = [v.values.reshape(v.sizes["chain"] * v.sizes["draw"], -1) for v in (a, b)]
    ratio = np.array([width_ratio(cols[0][:, i], cols[1][:, i], share=True) for i in range(cols[0].shape[1])])
    ratio = a.isel(chain=0, draw=0, drop=True).copy(data=ratio.reshape(a.shape[2:]))
    return (prob >= 0.01) & (ratio >= PRIOR_DRIVEN)
