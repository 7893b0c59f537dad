"""Fitting: NUTS (or a quick MAP) on the models, results as ArviZ InferenceData.

``fit(grid, law=...)`` checks that the grid can identify the law's
parameters, samples, and returns a ``Fit`` that knows whether it converged
(and says so loudly when it did not). ``two_stage`` is the paper's
procedure (invert each fine-tuned run to D_T, then regress), kept beside
the joint fit for comparison.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import xarray as xr
import numpyro.optim as optim
from numpyro.infer import MCMC, NUTS, SVI, Predictive, Trace_ELBO, init_to_median, log_likelihood
from numpyro.infer.autoguide import AutoDelta

import bayes_transfer
from bayes_transfer import laws
from bayes_transfer.grid import SCRATCH, Grid, grid_from_dataset, load_grid, pair_name, runs_to_dataset
from bayes_transfer.models import LAWS, PARAMS, ModelData, model_for, prepare
from bayes_transfer.priors import describe, resolve_priors

R_HAT_MAX = 1.01
ESS_MIN = 400
SAMPLE_DIMS = ("chain", "draw")


class NotIdentifiedError(ValueError):
    """The grid cannot identify a parameter of the law (and no prior was given for it)."""


@dataclass(frozen=True)
class Diagnostics:
    max_r_hat: float
    min_ess_bulk: float
    divergences: int
    converged: bool
    messages: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        head = "converged" if self.converged else "NOT CONVERGED"
        stats = f"max r_hat {self.max_r_hat:.3f}, min bulk ESS {self.min_ess_bulk:.0f}, divergences {self.divergences}"
        return "; ".join([f"{head}: {stats}", *self.messages])


@dataclass(eq=False)
class Fit:
    """A fitted law: ``idata`` (ArviZ) plus what made it.

    ``posterior`` has dims (chain, draw, ...) with natural-scale parameters
    (see ``models.PARAMS``) over ``target`` (scratch-law and target-level
    gap parameters) or ``pair`` (transfer and gap parameters; coordinate
    values like "text->python", with ``pair_source`` / ``pair_target``),
    plus ``sigma`` over ``kind`` and ``nu``. Sites ending ``_mu``, ``_tau``,
    ``_u`` (``_u_decentered``) are the sampler's internal values: population,
    scale and per-group values on the log / logit scale.
    """

    idata: az.InferenceData
    grid: Grid
    law: str
    config: dict
    sampler: dict

    @property
    def posterior(self) -> xr.Dataset:
        return self.idata.posterior

    @property
    def point_estimate(self) -> bool:
        return self.sampler.get("method") == "map"

    @property
    def params(self) -> list[str]:
        names = list(PARAMS[self.law])
        if self.law == "transfer":
            names = list(PARAMS[self.config["scratch_law"]]) + names
        return names + ["sigma", "nu"]

    def summary(self, var_names=None) -> pd.DataFrame:
        """Mean, sd, 5% and 95% quantiles, r_hat, bulk and tail ESS of each parameter."""
        post = self.posterior[var_names or self.params]
        rows = {}
        rhat = az.rhat(post) if not self.point_estimate else None
        ess_b = az.ess(post, method="bulk") if not self.point_estimate else None
        ess_t = az.ess(post, method="tail") if not self.point_estimate else None
        for name, da in post.data_vars.items():
            flat = da.stack(sample=SAMPLE_DIMS)
            extra = [d for d in da.dims if d not in SAMPLE_DIMS]
            index = [()] if not extra else list(np.ndindex(*[da.sizes[d] for d in extra]))
            for idx in index:
                sel = dict(zip(extra, idx))
                label = name if not extra else f"{name}[{','.join(str(da[d].values[i]) for d, i in sel.items())}]"
                v = flat.isel(sel).values
                row = {"mean": v.mean(), "sd": v.std(ddof=1) if v.size > 1 else 0.0, "5%": np.quantile(v, 0.05), "95%": np.quantile(v, 0.95)}
                for key, stat in (("r_hat", rhat), ("ess_bulk", ess_b), ("ess_tail", ess_t)):
                    row[key] = float(stat[name].isel(sel)) if stat is not None else np.nan
                rows[label] = row
        return pd.DataFrame.from_dict(rows, orient="index")

    def diagnostics(self) -> Diagnostics:
        if self.point_estimate:
            ok = bool(self.sampler.get("optimizer_success", False))
            msgs = ["MAP point estimate: no posterior uncertainty, no convergence diagnostics"]
            if not ok:
                msgs.append("the optimiser did not report success")
            return Diagnostics(np.nan, np.nan, 0, ok, msgs)
        return _diagnostics(self.idata, self.params)

    @property
    def converged(self) -> bool:
        return self.diagnostics().converged

    def save(self, path) -> Path:
        """Write the fit (results, grid, configs, version) as netCDF, atomically."""
        path = Path(path)
        posterior = self.idata.posterior.copy()
        posterior.attrs.update(
            {
                "bayes_transfer_version": bayes_transfer.__version__,
                "law": self.law,
                "model_config": json.dumps(self.config),
                "sampler_config": json.dumps(self.sampler),
                "grid_sha256": self.grid.sha256,
                "grid_attrs": json.dumps(self.grid.attrs, default=str),
            }
        )
        groups = {g: getattr(self.idata, g) for g in self.idata.groups() if g not in ("posterior", "constant_data")}
        # the run table travels with the fit, so reports can be made from the file alone
        idata = az.InferenceData(posterior=posterior, constant_data=runs_to_dataset(self.grid), **groups)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            idata.to_netcdf(str(tmp), engine="h5netcdf")
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()
        return path

    def __repr__(self) -> str:
        kind = "MAP point estimate" if self.point_estimate else f"{self.sampler['chains']}x{self.sampler['draws']} NUTS draws"
        return f"Fit(law={self.law!r}, {kind}, {self.grid!r})"


def load_fit(path, *, allow_version_mismatch: bool = False) -> Fit:
    """Read a fit file written by ``Fit.save``; its grid is restored from the file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such fit file: {path}")
    idata = az.from_netcdf(str(path))
    for group in idata.groups():
        setattr(idata, group, getattr(idata, group).load())
    attrs = idata.posterior.attrs
    if "bayes_transfer_version" not in attrs:
        raise ValueError(f"{path} is not a bayes_transfer fit file (no bayes_transfer_version attribute)")
    version = attrs["bayes_transfer_version"]
    if version != bayes_transfer.__version__ and not allow_version_mismatch:
        raise ValueError(
            f"{path} was written by bayes_transfer {version}, this is {bayes_transfer.__version__}; "
            "refit, or pass allow_version_mismatch=True to read it anyway"
        )
    grid = grid_from_dataset(idata.constant_data, json.loads(attrs["grid_attrs"]), attrs["grid_sha256"])
    return Fit(idata=idata, grid=grid, law=attrs["law"], config=json.loads(attrs["model_config"]), sampler=json.loads(attrs["sampler_config"]))


# ------------------------------------------------------------------ identifiability


def check_identifiable(data: ModelData, overrides: dict) -> None:
    """Refuse a grid that cannot identify a parameter, naming it.

    A parameter whose prior was given explicitly gets a warning instead: the
    caller has said what they believe, and the answer for it is that prior.
    """
    runs = data.runs
    problems = []

    def need(param, group, values, what):
        distinct = np.unique(values)
        if len(distinct) < 2:
            problems.append((param, f"{param} cannot be identified for {group}: {what} {distinct.tolist()}"))

    scratch = runs[runs["source"] == SCRATCH]
    if data.law in ("kaplan", "chinchilla", "transfer"):
        form = data.law if data.law != "transfer" else data.scratch_law
        for t, g in scratch.groupby("target"):
            need("alpha_N", f"target {t!r}", g["n_params"], "its scratch runs have the single model size")
            need("alpha_D", f"target {t!r}", g["data_tokens"], "its scratch runs have the single data size")
            if form == "chinchilla" and (g["n_params"].nunique() < 2 or g["data_tokens"].nunique() < 2):
                problems.append(("E", f"E cannot be separated from A and B for target {t!r} without several sizes and data amounts"))
    tuned = runs[runs["source"] != SCRATCH]
    for (s, t), g in tuned.groupby(["source", "target"]):
        name = pair_name(s, t)
        if data.law == "transfer":
            need("beta", f"pair {name!r}", g["n_params"], "its fine-tuned runs have the single model size")
            need("alpha", f"pair {name!r}", g["data_tokens"], "its fine-tuned runs have the single D_F")
            if g["pretrain_tokens"].nunique() > 1:
                warnings.warn(
                    f"pair {name!r} mixes pre-training amounts {sorted(g['pretrain_tokens'].unique())}: the transfer law "
                    "has no term for them (fit 'transfer_gap' at one size, or select one amount)",
                    stacklevel=3,
                )
        elif data.law == "transfer_gap":
            need("alpha_p", f"pair {name!r}", g["pretrain_tokens"], "its runs have the single pre-training amount")
    if data.law == "transfer_gap":
        for t in data.targets:
            g = runs[runs["target"] == t]
            need("alpha_f", f"target {t!r}", g["data_tokens"], "its runs have the single fine-tuning amount")
            if scratch[scratch["target"] == t].empty:
                problems.append(("C_0", f"C_0 cannot be identified for target {t!r}: no from-scratch runs"))
    errors = [msg for param, msg in problems if param not in overrides]
    for param, msg in problems:
        if param in overrides:
            warnings.warn(f"{msg}; its posterior is the prior you gave", stacklevel=3)
    if errors:
        raise NotIdentifiedError("; ".join(errors) + " (give the parameter a prior to fit it from that prior)")


# ------------------------------------------------------------------ fitting


def fit(
    grid,
    law: str = "transfer",
    *,
    scratch_law: str = "kaplan",
    priors: dict | None = None,
    method: str = "nuts",
    chains: int = 4,
    draws: int = 1000,
    warmup: int = 1000,
    seed: int = 0,
    progress: bool = True,
    ossification: bool = True,
    n_params=None,
    target_accept: float = 0.9,
    chain_method: str | None = None,
    map_steps: int = 6000,
) -> Fit:
    """Fit ``law`` to ``grid`` (a Grid or anything ``load_grid`` reads).

    ``law``: "kaplan" or "chinchilla" (scratch runs), "transfer" (scratch
    and fine-tuned jointly; its scratch form is ``scratch_law``),
    "transfer_gap" (one model size: ``n_params`` picks it). ``priors``
    overrides defaults by name (see ``priors.py``). ``ossification=False``
    gives the paper's transfer law exactly. ``method="map"`` is a quick
    point estimate (the joint mode found by ``map_steps`` Adam steps), a Fit
    with 1 chain x 1 draw; its hierarchical scales shrink towards 0 (a
    property of joint modes), so per-group differences need NUTS.
    ``chain_method``: NumPyro's; by default "parallel" when JAX has a device
    per chain, else "vectorized".
    """
    grid = load_grid(grid)
    if law not in LAWS:
        raise ValueError(f"unknown law {law!r}; expected one of {LAWS}")
    if method not in ("nuts", "map"):
        raise ValueError(f"unknown method {method!r}; expected 'nuts' or 'map'")
    for name, v in (("chains", chains), ("draws", draws), ("warmup", warmup)):
        if not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    data = prepare(grid, law, scratch_law, ossification, n_params)
    overrides = dict(priors or {})
    prior_set = resolve_priors(law, scratch_law, overrides)
    check_identifiable(data, overrides)
    if law in ("kaplan", "chinchilla") and len(grid.finetuned):
        warnings.warn(f"law {law!r} fits scratch runs only; {len(grid.finetuned)} fine-tuned run(s) not used", stacklevel=2)
    model = model_for(law)
    config = {
        "law": law,
        "scratch_law": scratch_law if law == "transfer" else (law if law in laws.SCRATCH_LAWS else None),
        "ossification": bool(ossification) if law == "transfer" else None,
        "n_params": None if n_params is None else float(n_params),
        "priors": {k: describe(v) for k, v in prior_set.items()},
        "priors_overridden": sorted(overrides),
        "centre": {"log_N0": data.log_N0, "log_D0": data.log_D0, "log_p0": data.log_p0},
    }
    _release_compiled_code()
    key = jax.random.PRNGKey(seed)
    t0 = time.perf_counter()
    if method == "nuts":
        if chain_method is None:
            chain_method = "parallel" if jax.local_device_count() >= chains else "vectorized"
        mcmc = MCMC(
            NUTS(model, target_accept_prob=target_accept, init_strategy=init_to_median(num_samples=15)),
            num_warmup=warmup,
            num_samples=draws,
            num_chains=chains,
            chain_method=chain_method,
            progress_bar=progress,
        )
        with warnings.catch_warnings():
            # NumPyro warns when it falls back from parallel chains; the choice is recorded in sampler.
            warnings.filterwarnings("ignore", message="There are not enough devices")
            mcmc.run(key, data, prior_set, y=data.y)
        samples = mcmc.get_samples(group_by_chain=True)
        stats = mcmc.get_extra_fields(group_by_chain=True)
        sample_stats = {"diverging": np.asarray(stats["diverging"])}
        sampler = {"method": "nuts", "chains": chains, "draws": draws, "warmup": warmup, "seed": seed, "target_accept": target_accept, "chain_method": chain_method}
    else:
        samples, success = _map(model, data, prior_set, key, map_steps)
        sample_stats = {"diverging": np.zeros((1, 1), dtype=bool)}
        sampler = {"method": "map", "chains": 1, "draws": 1, "seed": seed, "map_steps": map_steps, "optimizer_success": success}
    sampler["seconds"] = round(time.perf_counter() - t0, 3)
    idata = _to_idata(model, data, prior_set, samples, sample_stats, jax.random.fold_in(key, 1))
    result = Fit(idata=idata, grid=grid, law=law, config=config, sampler=sampler)
    if method == "nuts":
        diag = result.diagnostics()
        if not diag.converged:
            warnings.warn(f"fit of law {law!r} did not converge: {diag}", stacklevel=2)
    return result


def _release_compiled_code() -> None:
    """Drop JAX's compiled code when the process nears the kernel's memory-map limit.

    Every fit compiles afresh (its model closes over its own data) and each
    compilation keeps ~1,500 memory maps alive; at Linux's default limit of
    65,530 the process aborts after ~40 fits. Clearing only costs recompiles.
    """
    try:
        with open("/proc/sys/vm/max_map_count") as fh:
            limit = int(fh.read())
        with open("/proc/self/maps") as fh:
            used = sum(1 for _ in fh)
    except (OSError, ValueError):
        return
    if used > limit // 2:
        jax.clear_caches()


def _map(model, data, priors, key, steps):
    """The joint mode by Adam on a point-mass guide (robust where BFGS stalls on these laws).

    Succeeds when the last 1,000 steps moved the log joint by under 0.1.
    """
    guide = AutoDelta(model, init_loc_fn=init_to_median(num_samples=15))
    svi = SVI(model, guide, optim.Adam(0.01), Trace_ELBO())
    result = svi.run(key, steps, data, priors, y=data.y, progress_bar=False)
    losses = np.asarray(result.losses)
    point = guide.median(result.params)
    derived = Predictive(model, posterior_samples={k: v[None] for k, v in point.items()})(key, data, priors)
    samples = {k: jnp.asarray(v)[None] for k, v in derived.items() if k != "log_loss"}
    samples.update({k: jnp.asarray(v)[None, None] for k, v in point.items()})
    window = min(1000, steps - 1)
    success = bool(np.isfinite(losses[-1]) and abs(losses[-1] - losses[-1 - window]) < 0.1)
    return samples, success


def _to_idata(model, data: ModelData, priors, samples, sample_stats, key) -> az.InferenceData:
    """InferenceData with named dims from grouped-by-chain samples."""
    nchain, ndraw = next(iter(samples.values())).shape[:2]
    flat = {k: jnp.reshape(v, (nchain * ndraw, *v.shape[2:])) for k, v in samples.items()}
    pp = Predictive(model, posterior_samples=flat, return_sites=["log_loss"])(key, data, priors)["log_loss"]
    ll = log_likelihood(model, flat, data, priors, y=data.y)["log_loss"]

    def grouped(v):
        v = np.asarray(v)
        return v.reshape(nchain, ndraw, *v.shape[1:])

    coords = {"target": data.targets, "pair": data.pair_names, "kind": data.kinds, "run": data.runs["run"].to_numpy()}
    dims = {}
    for name, v in samples.items():
        if v.ndim == 3:
            dims[name] = [_dim_of(name)]
    dims["sigma"] = ["kind"]
    dims["log_loss"] = ["run"]
    idata = az.from_dict(
        posterior={k: np.asarray(v) for k, v in samples.items()},
        posterior_predictive={"log_loss": grouped(pp)},
        log_likelihood={"log_loss": grouped(ll)},
        observed_data={"log_loss": data.y},
        sample_stats=sample_stats,
        coords=coords,
        dims=dims,
    )
    for group in ("posterior", "posterior_predictive", "log_likelihood", "observed_data"):
        ds = getattr(idata, group)
        if "pair" in ds.dims:
            ds = ds.assign_coords(pair_source=("pair", [s for s, _ in data.pairs]), pair_target=("pair", [t for _, t in data.pairs]))
        if "run" in ds.dims:
            ds = ds.assign_coords(
                run_source=("run", data.runs["source"].to_numpy(str)), run_target=("run", data.runs["target"].to_numpy(str))
            )
        setattr(idata, group, ds)
    return idata


def _dim_of(name: str) -> str:
    """The named dim of a per-group site: pair-level or target-level by the model's structure."""
    base = name.removesuffix("_decentered").removesuffix("_u")
    pair_level = {"k", "alpha", "beta", "omega", "A_p", "alpha_p", "G"}
    return "pair" if base in pair_level else "target"


def _diagnostics(idata: az.InferenceData, params: list[str]) -> Diagnostics:
    post = idata.posterior
    # every sampled or derived quantity that varies: a fixed one (nu fixed, omega off) has no r_hat
    names = [n for n in post.data_vars if float(post[n].std()) > 0]
    rhat = az.rhat(post[names])
    ess = az.ess(post[names], method="bulk")
    max_rhat = max(float(rhat[n].max()) for n in names) if names else np.nan
    min_ess = min(float(ess[n].min()) for n in names) if names else np.nan
    div = int(idata.sample_stats["diverging"].sum())
    msgs = []
    if not max_rhat <= R_HAT_MAX:
        worst = max(names, key=lambda n: float(rhat[n].max()))
        msgs.append(f"r_hat {max_rhat:.3f} > {R_HAT_MAX} (worst: {worst}): chains disagree, run longer or check the model")
    if not min_ess >= ESS_MIN:
        worst = min(names, key=lambda n: float(ess[n].min()))
        msgs.append(f"bulk ESS {min_ess:.0f} < {ESS_MIN} (worst: {worst}): too few effective draws")
    if div:
        msgs.append(f"{div} divergent transition(s): the posterior geometry defeated the sampler, intervals are suspect")
    return Diagnostics(max_rhat, min_ess, div, not msgs, msgs)


# ------------------------------------------------------------------ the paper's two-stage procedure


@dataclass(eq=False)
class TwoStage:
    """Hernandez et al.'s procedure: per-run D_T from the inverted scratch law, then a regression.

    ``runs``: each fine-tuned run with D_E, D_T, ``low_data`` (D_F at most
    ``low_data_fraction`` of the data its size needs to come within 1% of
    its infinite-data loss, the regime the paper fitted) and ``used`` (low
    data, D_T finite and > 0). ``params``: per pair, the least-squares k,
    alpha, beta of log D_T = log k + alpha log D_F + beta log N with
    bootstrap (over runs) 5% and 95% quantiles. ``scratch``: the scratch-law
    fit (its posterior mean is the point used to invert).
    """

    runs: pd.DataFrame
    params: pd.DataFrame
    scratch: Fit


def two_stage(
    grid, *, scratch_law: str = "kaplan", method: str = "map", low_data_fraction: float | None = 0.1, n_boot: int = 1000, seed: int = 0, **fit_kwargs
) -> TwoStage:
    """The paper's two-stage fit: scratch law, invert each fine-tuned run, regress log D_T per pair.

    ``low_data_fraction=None`` regresses on every run with a positive D_T;
    in the high-data regime D_T is a small difference of large numbers and
    the inversion amplifies noise, which is why the paper left it out.
    """
    grid = load_grid(grid)
    if grid.finetuned.empty:
        raise ValueError("two_stage needs fine-tuned runs, and the grid has none")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="law .* fits scratch runs only")
        scratch = fit(grid, law=scratch_law, method=method, seed=seed, **fit_kwargs)
    point = scratch.posterior[list(PARAMS[scratch_law])].mean(SAMPLE_DIMS)
    ft = grid.finetuned.copy()
    missing = sorted(set(ft["target"]) - set(point["target"].values.tolist()))
    if missing:
        raise ValueError(f"two_stage needs from-scratch runs of each target; none for {missing}")
    theta = {n: point[n].sel(target=xr.DataArray(ft["target"].to_numpy(), dims="r")).values for n in PARAMS[scratch_law]}
    N, D_F = ft["n_params"].to_numpy(), ft["data_tokens"].to_numpy()
    D_E = np.asarray(laws.effective_data(scratch_law, N, ft["loss"].to_numpy(), **theta))
    law_fn = laws.kaplan if scratch_law == "kaplan" else laws.chinchilla
    floor = np.asarray(law_fn(N, np.inf, **theta))
    D_near = np.asarray(laws.effective_data(scratch_law, N, 1.01 * floor, **theta))
    ft["D_E"] = D_E
    ft["D_T"] = D_E - D_F
    ft["low_data"] = D_F <= low_data_fraction * D_near if low_data_fraction is not None else True
    ft["used"] = ft["low_data"] & np.isfinite(ft["D_T"]) & (ft["D_T"] > 0)
    bad = int((ft["low_data"] & ~ft["used"]).sum())
    if bad:
        warnings.warn(
            f"two_stage: {bad} low-data fine-tuned run(s) left out of the regression: D_T <= 0 (pre-training hurt) "
            "or infinite (loss at or below the scratch law's floor); see TwoStage.runs['used']",
            stacklevel=2,
        )
    rng = np.random.default_rng(seed)
    rows = []
    for (s, t), g in ft[ft["used"]].groupby(["source", "target"]):
        if len(g) < 4 or g["data_tokens"].nunique() < 2 or g["n_params"].nunique() < 2:
            warnings.warn(f"two_stage: pair {pair_name(s, t)!r} has too few usable runs ({len(g)}) to regress", stacklevel=2)
            continue
        X = np.column_stack([np.ones(len(g)), np.log(g["data_tokens"]), np.log(g["n_params"])])
        yv = np.log(g["D_T"].to_numpy())
        coef = np.linalg.lstsq(X, yv, rcond=None)[0]
        boot = []
        for _ in range(n_boot):
            idx = rng.integers(0, len(g), len(g))
            if np.linalg.matrix_rank(X[idx]) == 3:
                boot.append(np.linalg.lstsq(X[idx], yv[idx], rcond=None)[0])
        boot = np.asarray(boot)
        row = {"pair": pair_name(s, t), "source": s, "target": t, "n_runs": len(g)}
        for i, name in enumerate(("k", "alpha", "beta")):
            est, lo, hi = coef[i], np.quantile(boot[:, i], 0.05), np.quantile(boot[:, i], 0.95)
            if name == "k":
                est, lo, hi = np.exp(est), np.exp(lo), np.exp(hi)
            row.update({name: est, f"{name}_5%": lo, f"{name}_95%": hi})
        rows.append(row)
    return TwoStage(runs=ft.reset_index(drop=True), params=pd.DataFrame(rows).set_index("pair") if rows else pd.DataFrame(), scratch=scratch)
