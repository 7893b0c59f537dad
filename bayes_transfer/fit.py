"""Fitting: NUTS (or a quick MAP) on the models, results as ArviZ InferenceData.

``fit(grid, law=...)`` checks that the grid can identify the law's
parameters, samples, and returns a ``Fit`` that knows whether it converged
(and says so loudly when it did not). Answers computed from a fit that did
not converge raise ``NotConvergedError`` unless the caller allows it.
The fitting policy (which law a grid calls for, at which size) is here too.
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.optim as optim
import pandas as pd
import xarray as xr
from numpyro.infer import MCMC, NUTS, SVI, Predictive, Trace_ELBO, init_to_median, log_likelihood
from numpyro.infer.autoguide import AutoDelta

from bayes_transfer import laws, version
from bayes_transfer.atomic import atomic_write
from bayes_transfer.diagnostics import PRIOR_DRIVEN, Diagnostics, NotConvergedError, diagnose, width_ratio
from bayes_transfer.grid import Grid, grid_from_dataset, load_grid, runs_to_dataset
from bayes_transfer.identify import NotIdentifiedError, check_identifiable
from bayes_transfer.models import ModelData, model_for, prepare
from bayes_transfer.priors import describe, resolve_priors

SAMPLE_DIMS = ("chain", "draw")
PRIOR_DRAWS = 1000
MAX_TREE_DEPTH = 10  # NUTS's tree depth while drawing (2**10 - 1 leapfrog steps at most)
_SHARES = ("w", "omega")  # parameters in (0, 1): widths on the natural scale

__all__ = ["Fit", "NotIdentifiedError", "default_law", "fit", "gap_size", "load_fit"]


def default_law(grid) -> str:
    """'transfer_gap' if one size has several pre-training amounts, else 'transfer' with
    fine-tuned runs, else 'kaplan'."""
    tuned = grid.finetuned
    if tuned.empty:
        return "kaplan"
    per_size = tuned.groupby(["source", "target", "n_params"])["pretrain_tokens"].nunique()
    return "transfer_gap" if (per_size > 1).any() else "transfer"


def gap_size(grid) -> float:
    """The model size a transfer-gap fit uses: the one with the most pre-training amounts."""
    counts = grid.finetuned.groupby("n_params")["pretrain_tokens"].nunique()
    return float(counts.idxmax())


@dataclass(eq=False)
class Fit:
    """A fitted law: ``idata`` (ArviZ) plus what made it.

    ``posterior`` has dims (chain, draw, ...) with natural-scale parameters
    (the law's ``params``, laws.py) over ``target`` or ``pair``
    (coordinate values like "text->python", with ``pair_source`` /
    ``pair_target``), plus ``sigma`` (Student-t scale of log-loss) over
    ``kind`` and ``nu``. Sites ending ``_mu``, ``_tau``, ``_u``
    (``_u_decentered``) are the sampler's values: population, spread and
    per-group values on the log / logit scale. ``idata.prior`` holds draws
    of the same quantities from the prior, so every answer can say how far
    the data moved it.
    """

    idata: az.InferenceData
    grid: Grid
    law: str
    config: dict
    sampler: dict
    allow_unconverged: bool = False
    _diagnostics: Diagnostics | None = field(default=None, repr=False)
    # groups drawn on first use ("prior", "posterior_predictive"): each returns InferenceData holding it
    _lazy: dict[str, Callable[[], az.InferenceData]] = field(default_factory=dict, repr=False)

    @property
    def posterior(self) -> xr.Dataset:
        return self.idata.posterior

    def _group(self, name: str) -> xr.Dataset | None:
        if getattr(self.idata, name, None) is None and name in self._lazy:
            drawn = self._lazy.pop(name)()
            self.idata.add_groups({g: getattr(drawn, g) for g in drawn.groups()})
        return getattr(self.idata, name, None)

    @property
    def prior(self) -> xr.Dataset | None:
        """Prior draws of the posterior's quantities (drawn on first use; None for a fit file
        written without them)."""
        return self._group("prior")

    @property
    def posterior_predictive(self) -> xr.Dataset | None:
        """Log-losses simulated from the posterior, one per draw and run (drawn on first use)."""
        return self._group("posterior_predictive")

    @property
    def point_estimate(self) -> bool:
        return self.sampler.get("method") == "map"

    @property
    def params(self) -> list[str]:
        spec = laws.get(self.law)
        names = list(spec.params)
        if spec.kind == "transfer":
            names = list(laws.scratch(self.config["scratch_law"]).params) + names
        return names + [n for n in ("sigma", "sigma_pretrain", "nu") if n in self.posterior]

    def refit_settings(self) -> dict:
        """The sampler settings of this fit as ``fit`` arguments, so a refit (wider priors,
        another model) samples the same way; the chain method is chosen afresh."""
        s = self.sampler
        return dict(chains=s["chains"], draws=s["draws"], warmup=s["warmup"], seed=s["seed"],
                    target_accept=s.get("target_accept", 0.9), dense_mass=bool(s.get("dense_mass", False)),
                    warmup_tree_depth=s.get("warmup_tree_depth", MAX_TREE_DEPTH), progress=False)

    def accept_unconverged(self) -> "Fit":
        """This fit, with answers allowed although it did not converge (the caller says so)."""
        return replace(self, allow_unconverged=True)

    def check(self, allow_unconverged: bool = False) -> "Fit":
        """The fit, or ``NotConvergedError`` if it did not converge and that was not allowed."""
        if not (allow_unconverged or self.allow_unconverged or self.converged):
            raise NotConvergedError(
                f"the {self.law} fit did not converge ({self.diagnostics()}); its answers are not trustworthy. "
                "Refit with more warm-up and draws, or pass allow_unconverged=True to use it anyway")
        return self

    def summary(self, var_names=None, prob: float = 0.9) -> pd.DataFrame:
        """Per parameter and group: posterior median and interval, the prior's interval,
        the width ratio (posterior / prior, ``PRIOR_DRIVEN`` and above: "prior-driven"),
        r_hat, bulk and tail ESS."""
        post = self.posterior[var_names or self.params]
        prior = self.prior
        lo, hi = (1 - prob) / 2, (1 + prob) / 2
        pct = (f"{lo:.0%}", f"{hi:.0%}")
        sampled = not self.point_estimate
        rhat, ess_b, ess_t = ((az.rhat(post), az.ess(post, method="bulk"), az.ess(post, method="tail"))
                              if sampled else (None, None, None))
        rows = {}
        for name, da in post.data_vars.items():
            extra = [d for d in da.dims if d not in SAMPLE_DIMS]
            index = [()] if not extra else list(np.ndindex(*[da.sizes[d] for d in extra]))
            for idx in index:
                sel = dict(zip(extra, idx))
                label = name if not extra else f"{name}[{','.join(str(da[d].values[i]) for d, i in sel.items())}]"
                v = da.isel(sel).values.ravel()
                row = {"median": np.median(v), pct[0]: np.quantile(v, lo), pct[1]: np.quantile(v, hi)}
                pv = prior[name].isel(sel).values.ravel() if prior is not None and name in prior else None
                row[f"prior {pct[0]}"] = np.quantile(pv, lo) if pv is not None else np.nan
                row[f"prior {pct[1]}"] = np.quantile(pv, hi) if pv is not None else np.nan
                ratio = width_ratio(v, pv, name in _SHARES) if pv is not None and sampled else np.nan
                row["width ratio"] = ratio
                row["prior-driven"] = bool(ratio >= PRIOR_DRIVEN) if np.isfinite(ratio) else False
                for key, stat in (("r_hat", rhat), ("ess_bulk", ess_b), ("ess_tail", ess_t)):
                    row[key] = float(stat[name].isel(sel)) if stat is not None else np.nan
                rows[label] = row
        return pd.DataFrame.from_dict(rows, orient="index")

    def pooling_notes(self) -> list[str]:
        """How each spread across groups was set: fixed, or learnt (and from how few groups)."""
        sizes = {"target": self.posterior.sizes.get("target", 1), "pair": self.posterior.sizes.get("pair", 1)}
        notes = []
        few = {s.name: s.few for s in laws.sites_of(self.law, self.config.get("scratch_law"))}
        for name, text in self.config.get("priors", {}).items():
            site = name.removeprefix("tau_")
            if not name.startswith("tau_") or f"{site}_mu" not in self.posterior:
                continue
            n = sizes[laws.site_level(self.law, self.config.get("scratch_law"), site)]
            if n < 2:
                continue
            if "(" not in text:
                what = "shared by all groups" if float(text) == 0 else f"fixed at {text} (log scale)"
                if name not in self.config.get("priors_overridden", ()) and few.get(site) == float(text):
                    what += f": {n} groups are too few to learn it"
            else:
                what = f"learnt under {text}" + (f"; with only {n} groups its prior decides much of it"
                                                 if n < laws.FEW_GROUPS else "")
            notes.append(f"spread of {site} across {n} groups: {what}")
        return notes

    def diagnostics(self) -> Diagnostics:
        if self._diagnostics is None:
            if self.point_estimate:
                ok = bool(self.sampler.get("optimizer_success", False))
                msgs = ["MAP point estimate: no posterior uncertainty, no convergence diagnostics"]
                if not ok:
                    msgs.append("the optimiser did not report success")
                self._diagnostics = Diagnostics(np.nan, np.nan, 0, ok, msgs)
            else:
                self._diagnostics = diagnose(self.idata, self.sampler.get("max_tree_depth", 10))
        return self._diagnostics

    @property
    def converged(self) -> bool:
        return self.diagnostics().converged

    def save(self, path) -> Path:
        """Write the fit (results, grid, configs, version, prior and predictive draws) as netCDF, atomically."""
        self.prior, self.posterior_predictive  # a fit file always holds both
        posterior = self.idata.posterior.copy()
        posterior.attrs.update(
            {
                "bayes_transfer_version": version.__version__,
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
        return atomic_write(path, lambda tmp: idata.to_netcdf(str(tmp), engine="h5netcdf"))

    def __repr__(self) -> str:
        kind = "MAP point estimate" if self.point_estimate else f"{self.sampler['chains']}x{self.sampler['draws']} NUTS draws"
        return f"Fit(law={self.law!r}, {kind}, {self.grid!r})"


# What a fit file must hold for ``load_fit`` to rebuild the fit.
_FIT_ATTRS = ("bayes_transfer_version", "law", "grid_sha256", "grid_attrs", "model_config", "sampler_config")


def load_fit(path, *, allow_version_mismatch: bool = False) -> Fit:
    """Read a fit file written by ``Fit.save``; its grid is restored from the file.

    A file that is not a whole fit file is a ``ValueError`` naming the file
    and what is wrong with it."""
    import h5netcdf

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such fit file: {path}")
    if path.is_dir():
        raise ValueError(f"{path} is a directory, not a fit file")
    try:
        with h5netcdf.File(path, "r") as f:
            groups = set(f.groups)
            attrs = dict(f.groups["posterior"].attrs) if "posterior" in groups else {}
    except OSError:
        raise ValueError(f"{path} is not a netCDF fit file (written by `bayes-transfer fit`)") from None
    if "posterior" not in groups:
        raise ValueError(f"{path} is not a fit file (no posterior group): a loss grid? Fit it first with "
                         "`bayes-transfer fit`")
    missing = [a for a in _FIT_ATTRS if a not in attrs]
    if "constant_data" not in groups:
        missing.append("constant_data group (the grid it was fitted to)")
    if missing:
        raise ValueError(f"{path} is a damaged or foreign fit file: it lacks {', '.join(missing)}")
    if attrs["law"] not in laws.LAWS:
        raise ValueError(f"{path} holds a fit of law {attrs['law']!r}, which this version does not know "
                         f"(known: {', '.join(laws.LAWS)})")
    for name in ("grid_attrs", "model_config", "sampler_config"):
        try:
            json.loads(attrs[name])
        except (TypeError, ValueError):
            raise ValueError(f"{path} is a damaged fit file: its {name} attribute is not valid JSON") from None
    idata = az.from_netcdf(str(path))
    for group in idata.groups():
        setattr(idata, group, getattr(idata, group).load())
    attrs = idata.posterior.attrs
    written = attrs["bayes_transfer_version"]
    if written != version.__version__ and not allow_version_mismatch:
        raise ValueError(
            f"{path} was written by bayes_transfer {written}, this is {version.__version__}; "
            "refit, or pass allow_version_mismatch=True to read it anyway"
        )
    grid = grid_from_dataset(idata.constant_data, json.loads(attrs["grid_attrs"]), attrs["grid_sha256"])
    return Fit(idata=idata, grid=grid, law=attrs["law"], config=json.loads(attrs["model_config"]), sampler=json.loads(attrs["sampler_config"]))


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
    dense_mass: bool = False,
    warmup_tree_depth: int = MAX_TREE_DEPTH,
) -> Fit:
    """Fit ``law`` to ``grid`` (a Grid, or anything ``load_grid`` reads: capped runs are kept, as bounds).

    ``law``: a scratch law ("kaplan", "chinchilla", "data_constrained":
    scratch runs), "transfer" (scratch and fine-tuned jointly; its scratch
    form is ``scratch_law``), "transfer_gap" (one model size: ``n_params``,
    by default the size with the most pre-training amounts), "rectified"
    (one fine-tuning curve per pre-trained model and dataset; no scratch runs). ``priors`` overrides defaults by name (``priors.py``).
    ``ossification=False`` gives the paper's transfer law exactly.
    ``method="map"`` is a quick point estimate (the joint mode found by
    ``map_steps`` Adam steps), a Fit with 1 chain x 1 draw; its hierarchical
    spreads shrink towards 0 (a property of joint modes), so per-group
    differences need NUTS. ``chain_method``: NumPyro's; by default
    "parallel" when JAX has a device per chain, else "vectorized".
    ``dense_mass``: a dense mass matrix. On some small posteriors it saves
    most leapfrog steps (Chinchilla on Epoch AI's runs: 94 to 23 per draw),
    but it is not the default: on Porian et al.'s runs it diverged 3 times at
    target_accept 0.9, and on Li et al.'s it did not converge (r_hat 1.011,
    1,226 draws at the maximum tree depth) where the diagonal one did; on
    the shipped main grid (transfer law) it mixed worse (bulk ESS 696
    against 1,092; r_hat 1.008 against 1.005).
    ``warmup_tree_depth``: NUTS's maximum tree depth during warm-up (at most
    2**depth - 1 leapfrog steps per iteration; drawing keeps depth 10). Before
    the mass matrix is adapted, warm-up trajectories run to the limit; capping
    them is a speed lever, not the default. Measured (4 x 1000 after 1000,
    benchmarks/fit_cost_breakdown.py): on a simulated 192-run transfer grid,
    depth 6 cut a dense fit's warm-up steps from 187,000 to 59,000 per chain
    with as few steps per draw (29.5 against 30.0): 15.0 s -> 8.9 s with the
    sampler cached, on a quiet machine; but (one seed each) on Lin et al.'s
    1,260 curves (rectified law) it cut the bulk ESS from 1,838 to 568 and
    the fit failed the gate, and on the shipped two-source grid (diagonal
    mass) it took r_hat from 1.010 to 1.014.
    """
    grid = load_grid(grid, include_capped=True)  # a Grid as it is; anything else with its capped runs
    spec = laws.get(law)
    if method not in ("nuts", "map"):
        raise ValueError(f"unknown method {method!r}; expected 'nuts' or 'map'")
    for name, v in (("chains", chains), ("draws", draws), ("warmup", warmup), ("warmup_tree_depth", warmup_tree_depth)):
        if not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if spec.pretrain_axis and n_params is None and len(grid.finetuned):
        n_params = gap_size(grid)
    data = prepare(grid, law, scratch_law, ossification, n_params)
    overrides = dict(priors or {})
    prior_set = resolve_priors(law, scratch_law, overrides, data.groups)
    if not ossification:
        prior_set.pop("omega", None)
    check_identifiable(data, overrides)
    if spec.kind == "scratch" and len(grid.finetuned):
        warnings.warn(f"law {law!r} fits scratch runs only; {len(grid.finetuned)} fine-tuned run(s) not used", stacklevel=2)
    model = model_for(law)
    config = {
        "law": law,
        "scratch_law": data.scratch_law if spec.kind in ("scratch", "transfer") else None,
        "ossification": bool(ossification) if spec.kind == "transfer" else None,
        "n_params": None if n_params is None else float(n_params),
        "priors": {k: describe(v) for k, v in prior_set.items()},
        "priors_overridden": sorted(overrides),
        "centre": {"log_N0": data.log_N0, "log_D0": data.log_D0, "log_p0": data.log_p0},
        "censored_runs": [str(r) for r in data.runs["run"][data.censored]],
        "pretrain_runs": list(data.pretrain_runs),
    }
    _release_compiled_code()
    key = jax.random.PRNGKey(seed)
    t0 = time.perf_counter()
    if method == "nuts":
        if chain_method is None:
            chain_method = "parallel" if jax.local_device_count() >= chains else "vectorized"
        sampler = {"method": "nuts", "chains": chains, "draws": draws, "warmup": warmup, "seed": seed,
                   "target_accept": target_accept, "chain_method": chain_method, "dense_mass": dense_mass,
                   "max_tree_depth": MAX_TREE_DEPTH, "warmup_tree_depth": warmup_tree_depth}
        mcmc = MCMC(
            nuts_kernel(model, sampler),
            num_warmup=warmup,
            num_samples=draws,
            num_chains=chains,
            chain_method=chain_method,
            progress_bar=progress,
        )
        with warnings.catch_warnings():
            # NumPyro warns when it falls back from parallel chains; the choice is recorded in sampler.
            warnings.filterwarnings("ignore", message="There are not enough devices")
            mcmc.run(key, data, prior_set, y=data.y, extra_fields=("diverging", "energy", "num_steps"))
        samples = mcmc.get_samples(group_by_chain=True)
        stats = mcmc.get_extra_fields(group_by_chain=True)
        sample_stats = {"diverging": np.asarray(stats["diverging"]), "energy": np.asarray(stats["energy"]),
                        "n_steps": np.asarray(stats["num_steps"])}
    else:
        samples, success = _map(model, data, prior_set, key, map_steps)
        sample_stats = {"diverging": np.zeros((1, 1), dtype=bool)}
        sampler = {"method": "map", "chains": 1, "draws": 1, "seed": seed, "map_steps": map_steps, "optimizer_success": success}
    sampler["seconds"] = round(time.perf_counter() - t0, 3)
    idata = _to_idata(model, data, prior_set, samples, sample_stats)
    result = Fit(idata=idata, grid=grid, law=law, config=config, sampler=sampler, _lazy={
        "prior": _prior_draws(model, data, prior_set, samples, jax.random.fold_in(key, 3)),
        "posterior_predictive": _predictive_draws(model, data, prior_set, samples, jax.random.fold_in(key, 1))})
    diag = result.diagnostics()
    if not diag.converged:
        what = "MAP optimisation failed" if method == "map" else "did not converge"
        warnings.warn(f"fit of law {law!r} {what}: {diag}", stacklevel=2)
    return result


def nuts_kernel(model, sampler: dict) -> NUTS:
    """The NUTS kernel of a fit's ``sampler`` settings (target_accept, dense_mass, the tree depths)."""
    return NUTS(model, target_accept_prob=sampler["target_accept"], init_strategy=init_to_median(num_samples=15),
                dense_mass=bool(sampler["dense_mass"]),
                max_tree_depth=(sampler["warmup_tree_depth"], sampler["max_tree_depth"]))


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


def _dim_of(data: ModelData, name: str) -> str:
    return laws.site_level(data.law, data.scratch_law, name)


def _labelled(idata: az.InferenceData, data: ModelData) -> az.InferenceData:
    """Each group with the pair's source and target, and each run's, as coordinates."""
    for group in idata.groups():
        ds = getattr(idata, group)
        if "pair" in ds.dims:
            ds = ds.assign_coords(pair_source=("pair", [s for s, _ in data.pairs]), pair_target=("pair", [t for _, t in data.pairs]))
        if "run" in ds.dims:
            ds = ds.assign_coords(
                run_source=("run", data.runs["source"].to_numpy(str)), run_target=("run", data.runs["target"].to_numpy(str)),
                run_censored=("run", np.asarray(data.censored, bool)))
        setattr(idata, group, ds)
    return idata


def _names(data: ModelData, samples: dict) -> tuple[dict, dict]:
    coords = {"target": data.targets, "pair": data.pair_names, "kind": data.kinds, "run": data.runs["run"].to_numpy(),
              "pretrain_run": data.pretrain_runs}
    dims = {name: [_dim_of(data, name)] for name, v in samples.items() if np.ndim(v) == 3}
    dims.update({"sigma": ["kind"], "log_loss": ["run"]})
    return coords, dims


def _flat(samples: dict) -> dict:
    """Grouped-by-chain samples (chain, draw, ...) as one run of draws (chain * draw, ...)."""
    return {k: jnp.reshape(v, (-1, *v.shape[2:])) for k, v in samples.items()}


def _to_idata(model, data: ModelData, priors, samples, sample_stats) -> az.InferenceData:
    """InferenceData with named dims from grouped-by-chain samples (predictive and prior draws come later:
    ``_predictive_draws``, ``_prior_draws``)."""
    nchain = next(iter(samples.values())).shape[0]
    ll = np.asarray(log_likelihood(model, _flat(samples), data, priors, y=data.y)["log_loss"])
    coords, dims = _names(data, samples)
    idata = az.from_dict(
        posterior={k: np.asarray(v) for k, v in samples.items()},
        log_likelihood={"log_loss": ll.reshape(nchain, -1, *ll.shape[1:])},
        observed_data={"log_loss": data.y},
        sample_stats=sample_stats,
        coords=coords,
        dims=dims,
    )
    return _labelled(idata, data)


def _predictive_draws(model, data: ModelData, priors, samples, key):
    """A function drawing the posterior predictive (one simulated log-loss per draw and run), as the
    ``posterior_predictive`` group: called on first use (a report's checks), not at every fit, where
    it cost 15% of a Chinchilla fit (benchmarks/fit_cost_breakdown.py)."""

    def draw() -> az.InferenceData:
        nchain = next(iter(samples.values())).shape[0]
        pp = np.asarray(Predictive(model, posterior_samples=_flat(samples), return_sites=["log_loss"])(
            key, data, priors)["log_loss"])
        coords, dims = _names(data, samples)
        return _labelled(az.from_dict(posterior_predictive={"log_loss": pp.reshape(nchain, -1, *pp.shape[1:])},
                                      coords=coords, dims=dims), data)

    return draw


def _prior_draws(model, data: ModelData, priors, samples, key):
    """A function drawing ``PRIOR_DRAWS`` prior draws of the posterior's quantities (and
    the prior predictive), as the ``prior`` and ``prior_predictive`` groups.

    Called when a prior is first asked for, not at every fit: the prior pass
    compiles the model's samplers, which costs as much as 1,000 draws do
    (benchmarks/fit_cost_breakdown.py), and many fits never need it."""
    names = set(samples)
    coords, dims = _names(data, samples)

    def draw() -> az.InferenceData:
        prior = Predictive(model, num_samples=PRIOR_DRAWS)(key, data, priors)
        prior_pred = np.asarray(prior.pop("log_loss"))[None]
        kept = {k: np.asarray(v)[None] for k, v in prior.items() if k in names}
        return _labelled(az.from_dict(prior=kept, prior_predictive={"log_loss": prior_pred}, coords=coords,
                                      dims=dims), data)

    return draw
