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
from functools import partial
from pathlib import Path
from typing import Callable

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from numpyro.distributions.transforms import biject_to
import numpyro.optim as optim
from numpyro import handlers
import pandas as pd
import xarray as xr
from jax.scipy.special import gammaln
from numpyro.infer import NUTS, SVI, Predictive, Trace_ELBO, init_to_median, log_likelihood
from numpyro.infer.autoguide import AutoDelta
from tqdm.auto import tqdm

from bayes_transfer import laws, version
from bayes_transfer.atomic import atomic_write
from bayes_transfer.diagnostics import PRIOR_DRIVEN, Diagnostics, NotConvergedError, diagnose, width_ratio
from bayes_transfer.grid import Grid, grid_from_dataset, load_grid, runs_to_dataset
from bayes_transfer.identify import NotIdentifiedError, check_identifiable
from bayes_transfer.models import ModelData, model_for, padded, prepare
from bayes_transfer.priors import describe, resolve_priors

SAMPLE_DIMS = ("chain", "draw")
PRIOR_DRAWS = 1000
MAX_TREE_DEPTH = 10  # NUTS's tree depth while drawing (2**10 - 1 leapfrog steps at most)
MASS_MATRICES = ("auto", "pooled", "diagonal", "dense")
# "auto" takes the pooled dense mass matrix up to this many latent dimensions, the diagonal one
# above: a dense metric estimated from a pilot's few hundred draws per chain is noise in hundreds
# of dimensions (Lin et al.'s 1,260 curves, 361: README, benchmark section).
POOLED_MAX_DIM = 100
WARMUP = 1000  # warm-up iterations per chain: with the pooled mass matrix, a 750-iteration pilot and 250 more
CHUNK = 50  # NUTS iterations per compiled call at most: the progress bar moves between calls
PILOT_TREE_DEPTH = 6  # the pooled metric's pilot: at most 63 leapfrog steps per iteration
MIN_SHRINKAGE = 0.05  # the least share by which the pooled covariance's correlations are shrunk
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
        mass_matrix = s.get("mass_matrix", "dense" if s.get("dense_mass") else "diagonal")  # older fits: a flag
        return dict(chains=s["chains"], draws=s["draws"], warmup=s["warmup"], seed=s["seed"],
                    target_accept=s.get("target_accept", 0.9), mass_matrix=mass_matrix, progress=False)

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
    warmup: int = WARMUP,
    seed: int = 0,
    progress: bool = True,
    ossification: bool = True,
    n_params=None,
    target_accept: float = 0.9,
    chain_method: str | None = None,
    map_steps: int = 6000,
    mass_matrix: str = "auto",
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
    differences need NUTS. ``chain_method`` (named as NumPyro names them): by default
    "parallel" when JAX has a device per chain, else "vectorized".
    ``mass_matrix``: how NUTS's mass matrix (its metric) is learnt during the ``warmup``
    iterations. "auto" (the default): "pooled" for posteriors of at most
    ``POOLED_MAX_DIM`` latent dimensions, else "diagonal". "pooled": a pilot with a diagonal metric and
    trees of depth at most 6 for the first 3/4 of the warm-up; then one dense
    metric, the covariance of the pilot's second half pooled over all chains
    with its correlations shrunk (``pooled_inverse_metric``), held fixed while the step size
    is adapted over the last 1/4 and drawing. "diagonal" and "dense":
    NumPyro's windowed adaptation, each chain on its own. Why pooled is the
    default (README, benchmark section): a dense metric draws at a quarter
    of a diagonal one's leapfrog steps on these correlated posteriors, but
    estimated per chain from NumPyro's first 25-draw window it sends the
    next warm-up iterations to the maximum tree depth, and on some grids it
    mixed worse than the diagonal one.
    """
    grid = load_grid(grid, include_capped=True)  # a Grid as it is; anything else with its capped runs
    spec = laws.get(law)
    if method not in ("nuts", "map"):
        raise ValueError(f"unknown method {method!r}; expected 'nuts' or 'map'")
    for name, v in (("chains", chains), ("draws", draws), ("warmup", warmup)):
        if not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if mass_matrix not in MASS_MATRICES:
        raise ValueError(f"unknown mass_matrix {mass_matrix!r}; expected one of {', '.join(MASS_MATRICES)}")
    pilot_half = (warmup - _final(warmup) + 1) // 2  # the pilot draws its metric is estimated from
    if mass_matrix in ("auto", "pooled") and (warmup < 8 or pilot_half * chains < 3):
        raise ValueError(f"the pooled mass matrix needs warmup >= 8 (a pilot and a step-size phase) and at least 3 "
                         f"pilot draws to estimate it from (half the pilot, all chains): got warmup {warmup}, "
                         f"{chains} chain(s)")
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
    bound, shared = _as_arguments(model, data, prior_set)
    key = jax.random.PRNGKey(seed)
    t0 = time.perf_counter()
    if method == "nuts":
        if chain_method is None:
            chain_method = "parallel" if jax.local_device_count() >= chains else "vectorized"
        elif chain_method == "parallel" and jax.local_device_count() < chains:
            chain_method = "sequential"  # what NumPyro falls back to; the record says what ran
        if mass_matrix == "auto":
            mass_matrix = "pooled" if _latent_dim(model, data, prior_set) <= POOLED_MAX_DIM else "diagonal"
        sampler = {"method": "nuts", "chains": chains, "draws": draws, "warmup": warmup, "seed": seed,
                   "target_accept": target_accept, "chain_method": chain_method, "mass_matrix": mass_matrix,
                   "max_tree_depth": MAX_TREE_DEPTH}
        drawn, warmup_record = _run_nuts(bound, shared, key, sampler, progress)
        sampler.update(warmup_record)
        samples = drawn["z"]
        sample_stats = {"diverging": drawn["diverging"], "energy": drawn["energy"], "n_steps": drawn["num_steps"]}
    else:
        samples, success = _map(model, data, prior_set, key, map_steps)
        sample_stats = {"diverging": np.zeros((1, 1), dtype=bool)}
        sampler = {"method": "map", "chains": 1, "draws": 1, "seed": seed, "map_steps": map_steps, "optimizer_success": success}
    sampler["seconds"] = round(time.perf_counter() - t0, 3)
    idata = _to_idata(bound, shared, data, samples, sample_stats)
    result = Fit(idata=idata, grid=grid, law=law, config=config, sampler=sampler, _lazy={
        "prior": _prior_draws(bound, shared, data, samples, jax.random.fold_in(key, 3)),
        "posterior_predictive": _predictive_draws(bound, shared, data, samples, jax.random.fold_in(key, 1))})
    diag = result.diagnostics()
    if not diag.converged:
        what = "MAP optimisation failed" if method == "map" else "did not converge"
        warnings.warn(f"fit of law {law!r} {what}: {diag}", stacklevel=2)
    return result


def _latent_dim(model, data, priors) -> int:
    """The number of latent dimensions NUTS samples (one abstract trace of the model: shapes
    only, 0.05 s where running the trace op by op took 1.8 s)."""
    def latent():
        trace = handlers.trace(handlers.seed(model, 0)).get_trace(data, priors, y=data.y)
        return {name: site["value"] for name, site in trace.items() if site["type"] == "sample" and not site["is_observed"]}

    return sum(int(np.prod(v.shape)) for v in jax.eval_shape(latent).values())


def _run_nuts(bound, shared, key, sampler: dict, progress: bool):
    """Warm up and draw as ``sampler["mass_matrix"]`` says: the draws (``z``, ``diverging``,
    ``energy``, ``num_steps``, each chain x draw x ...) and what the warm-up measured (the
    pooled pilot's mean leapfrog steps per chain, its shrinkage).

    NumPyro's kernels, driven here rather than by its ``MCMC``: every compiled program takes
    the data as an argument (``MCMC`` compiles them into its parallel chains as constants), so a
    grid of the same shapes loads the programs from JAX's persistent cache instead of compiling
    them; and the progress bar is drawn between compiled calls of at most ``CHUNK`` iterations,
    not from inside them (a program that calls back to Python is never written to that cache).
    """
    chains, warmup, draws, target = sampler["chains"], sampler["warmup"], sampler["draws"], sampler["target_accept"]
    chains_map = _chain_map(sampler["chain_method"])
    bar = tqdm(total=chains * (warmup + draws), desc="NUTS", unit="it", disable=not progress, leave=False)
    with bar:
        if sampler["mass_matrix"] != "pooled":
            kernel = NUTS(bound, target_accept_prob=target, init_strategy=init_to_prior_median(),
                          dense_mass=sampler["mass_matrix"] == "dense", max_tree_depth=sampler["max_tree_depth"])
            state = _started(kernel, warmup, chains_map, key, chains, shared)
            _, out = _iterations(kernel, shared, chains_map, bar)(state, warmup + draws)
            return _drawn(kernel, shared, out, warmup), {}
        return _pooled(bound, shared, key, sampler, chains_map, bar)


def _as_arguments(model, data: ModelData, priors: dict):
    """``(bound, shared)``: ``bound(shared, y=None)`` runs ``model`` on ``shared``, the padded data
    and the priors' parameters, so that compiled programs take them as their argument (a grid
    of the same padded shapes, or a refit under other prior parameters, loads the programs from
    the cache). A number given as a prior (a fixed spread, nu) is structure: the model branches
    on it, so it is closed over, as is a distribution not rebuilt from its parameters.

    The parameters travel as plain dicts (prior -> name -> value) and the distributions are
    rebuilt inside: NumPyro flattens a distribution's parameters in the order of a Python set,
    which changes from one process to the next, and with it the compiled program's argument
    order: a later process missed the sampler in the cache about half the time."""
    fixed, parameters = {}, {}
    for name, prior in priors.items():
        values = _parameters(prior)
        if values is None:
            fixed[name] = prior
        else:
            parameters[name] = values

    def bound(shared, y=None):
        d, values = shared
        model(d, {**fixed, **{k: type(priors[k])(**v) for k, v in values.items()}}, y=y)

    return bound, (padded(data), parameters)


def _parameters(prior) -> dict | None:
    """A distribution's parameters by name, where its class rebuilds it from them; else None."""
    if not isinstance(prior, dist.Distribution):
        return None
    try:
        values = {k: jnp.asarray(getattr(prior, k)) for k in prior.arg_constraints}
        rebuilt = type(prior)(**values)
    except (TypeError, AttributeError, ValueError):
        return None
    same = all(np.array_equal(np.asarray(getattr(rebuilt, k)), np.asarray(v)) for k, v in values.items())
    return values if same and rebuilt.batch_shape == prior.batch_shape else None


def _final(warmup: int) -> int:
    """Iterations of a pooled fit's warm-up after its pilot: the drawing kernel's step-size phase."""
    return max(4, warmup // 4)


def _started(kernel, num_warmup: int, chains_map, key, chains: int, shared):
    """Every chain's initial state under ``kernel`` (its start: ``init_to_prior_median``)."""
    return chains_map(lambda k, sh: kernel.init(k, num_warmup, None, (sh,), {"y": sh[0].y}))(
        jax.random.split(key, chains), shared)


def _pooled(bound, shared, key, sampler: dict, chains_map, bar):
    """The pooled mass matrix (``fit``'s docstring): a pilot of NumPyro's diagonal adaptation
    (trees of depth at most ``PILOT_TREE_DEPTH``), then one kernel for every chain with the
    dense metric of the pilot's second half (``pooled_inverse_metric``) held fixed, restarted at
    the pilot's last positions; its first ``final`` iterations adapt the step size, and are
    dropped."""
    chains, warmup, draws, target = sampler["chains"], sampler["warmup"], sampler["draws"], sampler["target_accept"]
    pilot_key, state_key, key = jax.random.split(key, 3)
    final = _final(warmup)
    bar.set_description("NUTS warm-up")
    pilot = NUTS(bound, target_accept_prob=target, init_strategy=init_to_prior_median(), max_tree_depth=PILOT_TREE_DEPTH)
    state = _started(pilot, warmup - final, chains_map, pilot_key, chains, shared)
    state, out = _iterations(pilot, shared, chains_map, bar)(state, warmup - final)
    inverse_metric, shrinkage = pooled_inverse_metric(out["z"])

    # One dense metric for every chain, held fixed: it enters the chains' initial state (the
    # metric an argument of this program); the drawing kernel's first ``final`` iterations
    # adapt the step size on NumPyro's schedule, and are dropped.
    drawing = []

    def restart(key, draw_key, z, metric, shared):
        kernel = NUTS(bound, target_accept_prob=target, dense_mass=True, inverse_mass_matrix=metric,
                      adapt_mass_matrix=False, max_tree_depth=sampler["max_tree_depth"])
        drawing.append(kernel)  # its sampling step holds no metric: it reads it from the state
        # the drawing keys set inside the program: a state assembled outside it is laid out
        # unlike the iterations' own, and their program would be traced and loaded a second time
        return kernel.init(key, final, z, (shared,), {"y": shared[0].y})._replace(rng_key=draw_key)

    state = chains_map(restart, broadcast=2)(jax.random.split(state_key, chains), jax.random.split(key, chains),
                                             state.z, jnp.asarray(inverse_metric), shared)
    drawing[-1]._inverse_mass_matrix = None  # the metric's tracer from that program: never to be read
    bar.set_description("NUTS drawing")
    _, drawn = _iterations(drawing[-1], shared, chains_map, bar)(state, final + draws)
    steps = out["num_steps"].sum(axis=1).mean()
    return _drawn(drawing[-1], shared, drawn, final), {"pilot_steps_per_chain": round(float(steps), 1),
                                                      "metric_shrinkage": round(shrinkage, 4)}


def init_to_prior_median(site=None):
    """NumPyro init strategy: every latent site starts at its prior's median given its parents'
    starts, moved on the unconstrained scale by a uniform draw of at most half the prior's sd
    there (sd 0.29 of it: about the noise of the 15-draw median of NumPyro's ``init_to_median``,
    so chains start apart, for R-hat). Closed forms where known (``_median_and_spread``), else
    ``init_to_median`` itself: its samplers (Gamma's and Beta's rejection loops, compiled twice
    into the start program) cost 6.5 s of compiling a 192-run fit."""
    if site is None:
        return partial(init_to_prior_median)  # NumPyro reads a strategy's ``func``
    if site["type"] != "sample" or site["is_observed"] or site["fn"].support.is_discrete or site["value"] is not None:
        return init_to_median(site, num_samples=15)
    fn = site["fn"]
    known = _median_and_spread(fn)
    if known is None:
        return init_to_median(site, num_samples=15)
    median, spread = known
    shape = fn.shape(site["kwargs"].get("sample_shape", ()))
    transform = biject_to(fn.support)
    u = transform.inv(jnp.broadcast_to(median, shape))
    jitter = jax.random.uniform(site["kwargs"]["rng_key"], shape, minval=-0.5, maxval=0.5)
    return transform(u + jitter * jnp.broadcast_to(spread, shape))


def _median_and_spread(fn):
    """The median of prior ``fn`` and its sd on the unconstrained scale (each batched like its
    parameters), or None where no form is known. Exact but for the medians of Gamma
    (Wilson-Hilferty's cube root for shapes >= 1, 0.4% high at shape 2; below 1 the small-shape
    limit (Gamma(k+1)/2)^(1/k), 14% low at shape 1/2) and Beta (Kerman's (a - 1/3)/(a + b - 2/3)
    for a, b >= 1, 4% low at Beta(1, 18); the mean otherwise); the sd of a half-normal's or
    half-Cauchy's log is that of the standard ones, of a uniform's logit pi / sqrt(3)."""
    while isinstance(fn, (dist.ExpandedDistribution, dist.Independent, dist.MaskedDistribution)):
        fn = fn.base_dist
    if isinstance(fn, (dist.Normal, dist.Laplace)):
        return fn.loc, fn.scale * (np.sqrt(2.0) if isinstance(fn, dist.Laplace) else 1.0)
    if isinstance(fn, (dist.StudentT, dist.Cauchy)):
        return fn.loc, fn.scale  # a heavy tail's sd is infinite: its scale instead
    if isinstance(fn, dist.LogNormal):
        return jnp.exp(fn.base_dist.loc), fn.base_dist.scale
    if isinstance(fn, dist.HalfNormal):
        return fn.scale * 0.6744897501960817, 1.1107  # sqrt(2) erfinv(1/2); sd of log|Z|: pi / sqrt(8)
    if isinstance(fn, dist.HalfCauchy):
        return fn.scale, np.pi / 2
    if isinstance(fn, dist.Uniform):
        return (fn.low + fn.high) / 2, np.pi / np.sqrt(3.0)
    if isinstance(fn, dist.Exponential):
        return np.log(2.0) / fn.rate, np.pi / np.sqrt(6.0)  # Var log X = trigamma(1) = pi^2 / 6
    if isinstance(fn, dist.Gamma):
        k = fn.concentration
        large = k * (1 - 1 / (9 * k)) ** 3
        small = jnp.exp((gammaln(k + 1) - np.log(2.0)) / k)
        return jnp.where(k >= 1, large, small) / fn.rate, jnp.sqrt(_trigamma(k))  # Var log X = trigamma(k)
    if type(fn) is dist.Beta:
        a, b = fn.concentration1, fn.concentration0
        median = jnp.where((a >= 1) & (b >= 1), (a - 1 / 3) / (a + b - 2 / 3), a / (a + b))
        return median, jnp.sqrt(_trigamma(a) + _trigamma(b))  # Var logit X = trigamma(a) + trigamma(b)
    return None


def _trigamma(x):
    """psi_1(x) for x > 0 to 1e-9: the recurrence psi_1(x) = psi_1(x + 1) + 1/x^2 up to x + 6, then
    its asymptotic series (a few operations where JAX's ``polygamma`` compiles a zeta function:
    2 s of the start program)."""
    head = sum(1 / (x + i) ** 2 for i in range(6))
    y = x + 6
    return head + 1 / y + 1 / (2 * y**2) + 1 / (6 * y**3) - 1 / (30 * y**5) + 1 / (42 * y**7) - 1 / (30 * y**9)


def _chain_map(method: str):
    """``mapped(fn, broadcast)``: ``fn(*per_chain, *shared)`` over chains, compiled once; the
    leading arguments carry a chain axis, the last ``broadcast`` (the data, by default) are
    shared by every chain. ``method``: "parallel" (a device per chain), "vectorized" or
    "sequential", as NumPyro's MCMC means them."""
    def mapped(fn, broadcast=1):
        compiled = {}

        def run(*args):
            n = len(args) - broadcast
            if n not in compiled:
                axes = (0,) * n + (None,) * broadcast
                if method == "parallel":
                    compiled[n] = jax.pmap(fn, in_axes=axes)
                elif method == "vectorized":
                    compiled[n] = jax.jit(jax.vmap(fn, in_axes=axes))
                else:
                    compiled[n] = jax.jit(lambda *a: jax.lax.map(lambda xs: fn(*xs, *a[n:]), a[:n]))
            return compiled[n](*args)
        return run
    return mapped


def _iterations(kernel, shared, chains_map, bar):
    """``run(state, n)``: ``n`` NUTS iterations of ``kernel`` from ``state``, giving the last state
    and, per chain x iteration, the unconstrained ``z``, ``diverging``, ``energy`` and
    ``num_steps`` (numpy). One compiled program for any ``n``: calls of at most ``CHUNK``
    iterations, their count an argument (a loop filling a buffer of ``CHUNK``)."""
    fields = ("diverging", "energy", "num_steps")

    def chunk(state, n, shared):
        def step(i, carry):
            s, buffer = carry
            s = kernel.sample(s, (shared,), {"y": shared[0].y})
            now = {"z": s.z, **{f: getattr(s, f) for f in fields}}
            return s, jax.tree.map(lambda b, v: b.at[i].set(v), buffer, now)

        first = {"z": state.z, **{f: jnp.asarray(getattr(state, f)) for f in fields}}
        buffer = jax.tree.map(lambda v: jnp.zeros((CHUNK, *v.shape), v.dtype), first)
        return jax.lax.fori_loop(0, n, step, (state, buffer))

    program = chains_map(chunk, broadcast=2)

    def run(state, n):
        pieces = []
        for start in range(0, n, CHUNK):
            size = min(CHUNK, n - start)
            state, out = program(state, np.int64(size), shared)
            pieces.append(jax.tree.map(lambda v: np.asarray(v)[:, :size], jax.device_get(out)))
            bar.update(size * len(state.i))
        return state, jax.tree.map(lambda *p: np.concatenate(p, axis=1), *pieces)
    return run


def _drawn(kernel, shared, out: dict, skip: int) -> dict:
    """The draws after the first ``skip`` iterations, ``z`` on the constrained scale with the
    model's deterministic sites (one compiled program, the data its argument)."""
    out = jax.tree.map(lambda v: v[:, skip:], out)

    @jax.jit
    def constrain(z, shared):
        return jax.vmap(jax.vmap(kernel.postprocess_fn((shared,), {"y": shared[0].y})))(z)

    return {**{k: out[k] for k in ("diverging", "energy", "num_steps")},
            "z": jax.tree.map(np.asarray, constrain(out["z"], shared))}


def pooled_inverse_metric(z: dict) -> tuple[np.ndarray, float]:
    """A dense inverse metric from warm-up draws ``z`` (unconstrained, chain x draw x ...), in the
    order NumPyro flattens ``z`` (sorted site names), and the share its correlations were shrunk by.

    The covariance of the second half of every chain's draws, pooled (4 chains give 4x one
    chain's draws), with its correlations shrunk towards 0 by Schäfer & Strimmer's (2005)
    estimate of the best share, at least ``MIN_SHRINKAGE``: with few draws against the
    dimension (hundreds of per-curve sites) the share nears 1, a diagonal metric.
    """
    flat = np.concatenate([np.asarray(z[name]).reshape(*np.shape(z[name])[:2], -1) for name in sorted(z)], axis=-1)
    half = flat[:, flat.shape[1] // 2:].reshape(-1, flat.shape[-1])
    n = half.shape[0]
    if n < 3:
        raise ValueError("the pooled mass matrix needs at least 3 warm-up draws to estimate a covariance")
    sd = half.std(axis=0, ddof=1)
    sd = np.maximum(sd, 1e-6 * max(float(sd.max()), 1e-12))  # a site the pilot never moved stays invertible
    x = (half - half.mean(axis=0)) / sd
    corr = x.T @ x / (n - 1)
    # the sampling variance of each correlation: sum over draws of (x_i x_j - mean)^2, scaled
    spread = (x**2).T @ (x**2) - (n - 1) ** 2 / n * corr**2
    off = ~np.eye(len(corr), dtype=bool)
    denominator = float(np.sum(corr[off] ** 2))
    shrinkage = 1.0 if denominator == 0 else float(np.sum(n / (n - 1) ** 3 * spread[off]) / denominator)
    shrinkage = min(1.0, max(MIN_SHRINKAGE, shrinkage))
    corr = np.where(off, (1 - shrinkage) * corr, 1.0)
    return corr * np.outer(sd, sd), shrinkage


def _release_compiled_code() -> None:
    """Drop JAX's compiled code when the process nears the kernel's memory-map limit.

    Every fit builds its own programs (compiled, or loaded from the persistent
    cache) and each keeps ~1,500 memory maps alive; at Linux's default limit of
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
    guide = AutoDelta(model, init_loc_fn=init_to_prior_median())
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


def _to_idata(bound, shared, data: ModelData, samples, sample_stats) -> az.InferenceData:
    """InferenceData with named dims from grouped-by-chain samples (predictive and prior draws come later:
    ``_predictive_draws``, ``_prior_draws``)."""
    nchain = next(iter(samples.values())).shape[0]
    pointwise = jax.jit(lambda flat, shared: log_likelihood(bound, flat, shared, y=shared[0].y)["log_loss"])
    ll = np.asarray(pointwise(_flat(samples), shared))[:, :len(data.y)]  # the padding's ghost runs dropped
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


def _predictive_draws(bound, shared, data: ModelData, samples, key):
    """A function drawing the posterior predictive (one simulated log-loss per draw and run), as the
    ``posterior_predictive`` group: called on first use (a report's checks), not at every fit, where
    it cost 15% of a Chinchilla fit (benchmarks/fit_cost_breakdown.py)."""
    predict = jax.jit(lambda key, flat, shared: Predictive(bound, posterior_samples=flat, return_sites=["log_loss"])(
        key, shared)["log_loss"])

    def draw() -> az.InferenceData:
        nchain = next(iter(samples.values())).shape[0]
        pp = np.asarray(predict(key, _flat(samples), shared))[:, :len(data.y)]  # the ghost runs dropped
        coords, dims = _names(data, samples)
        return _labelled(az.from_dict(posterior_predictive={"log_loss": pp.reshape(nchain, -1, *pp.shape[1:])},
                                      coords=coords, dims=dims), data)

    return draw


def _prior_draws(bound, shared, data: ModelData, samples, key):
    """A function drawing ``PRIOR_DRAWS`` prior draws of the posterior's quantities (and
    the prior predictive), as the ``prior`` and ``prior_predictive`` groups.

    Called when a prior is first asked for, not at every fit: the prior pass
    compiles the model's samplers, which costs as much as 1,000 draws do
    (benchmarks/fit_cost_breakdown.py), and many fits never need it."""
    names = set(samples)
    coords, dims = _names(data, samples)
    simulate = jax.jit(lambda key, shared: Predictive(bound, num_samples=PRIOR_DRAWS)(key, shared))

    def draw() -> az.InferenceData:
        prior = simulate(key, shared)
        prior_pred = np.asarray(prior.pop("log_loss"))[None, :, :len(data.y)]  # the ghost runs dropped
        kept = {k: np.asarray(v)[None] for k, v in prior.items() if k in names}
        return _labelled(az.from_dict(prior=kept, prior_predictive={"log_loss": prior_pred}, coords=coords,
                                      dims=dims), data)

    return draw
