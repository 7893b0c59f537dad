"""NumPyro models of the laws: scratch, joint scratch + transfer, transfer gap, fine-tuning curves.

Each model is one function ``model(data, priors, y=None)``: with ``y`` it is
the likelihood, without it the prior-predictive simulator (simulation-based
calibration uses it that way; ``simulate_losses`` instead draws a grid from
the laws at parameters one chooses). ``data`` is a ``ModelData`` built from
a ``Grid`` by ``prepare``: log inputs centred on their grid means, group
indices, run kinds, censoring flags. The laws themselves, with their sites
and priors, are in ``laws.py``; the math is in docs/laws.md.

Structure (all on the log scale; (0, 1) parameters on the logit scale):

- each target has its own scratch law, its sites partially pooled across
  targets (Normal(population value, ``tau``)); with one target the
  population value is the target's;
- each (source, target) pair has its own transfer (or gap) sites, pooled
  across pairs the same way (with 2-4 pairs a transfer site's spread is
  fixed, not learnt: ``priors.resolve_priors``); ``omega`` is per pair, unpooled; the gap law's
  fine-tuning sites (alpha_f, E, C_0) are per target;
- the rectified law's sites are per pair and unpooled;
- one shared effect on log-loss per pre-training run (its fine-tuned runs
  move together), scale ``sigma_pretrain``;
- noise: Student-t on log-loss, one scale per run kind (scratch,
  fine-tuned). A run whose recorded loss is only an upper bound on its
  data-limited loss (it hit its step cap, or its best evaluation was its
  first) is censored: it contributes P(log L <= recorded), not a density.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field, replace

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pandas as pd
from jax.scipy.special import betainc
from numpyro.infer.reparam import LocScaleReparam

from bayes_transfer import laws
from bayes_transfer.grid import Grid, load_grid
from loss_grid import CAPPED, PRETRAIN_RUN, SCRATCH, pair_label


@dataclass(frozen=True, eq=False)
class ModelData:
    """A grid as a model reads it. Arrays are over the runs the model uses."""

    law: str
    scratch_law: str
    ossification: bool
    runs: pd.DataFrame  # the grid rows used, in order
    targets: list[str]
    pairs: list[tuple[str, str]]
    kinds: list[str]
    log_N0: float
    log_D0: float
    log_p0: float
    x_N: np.ndarray  # log N - log N0
    x_D: np.ndarray  # log D (scratch) or log D_F (fine-tuned) - log D0
    x_p: np.ndarray  # log p - log p0 (transfer gap, pre-trained runs; 0 elsewhere)
    target_idx: np.ndarray
    pair_idx: np.ndarray  # -1 for scratch runs
    kind_idx: np.ndarray
    y: np.ndarray = field(repr=False)  # log loss
    censored: np.ndarray = field(default=None, repr=False)  # recorded loss is an upper bound
    pretrain_idx: np.ndarray = field(default=None, repr=False)  # pre-training run of each run, -1 for scratch
    pretrain_runs: list = field(default_factory=list)
    inputs: dict = field(default_factory=dict, repr=False)  # law-specific per-run inputs (laws.py)
    # How the model reads per-group values per run and where it needs the CDF, as arrays of the
    # data (not built from indices while tracing), so a compiled model takes any grid of its shape.
    target_onehot: np.ndarray = field(default=None, repr=False)  # run x target
    pair_onehot: np.ndarray = field(default=None, repr=False)  # run x pair; scratch runs read pair 0
    censored_idx: np.ndarray = field(default=None, repr=False)  # positions of the censored runs
    ghost: np.ndarray = field(default=None, repr=False)  # padding runs (``padded``): no likelihood

    def __post_init__(self):
        derived = {"target_onehot": _onehot(self.target_idx, len(self.targets)),
                   "pair_onehot": _onehot(np.maximum(self.pair_idx, 0), len(self.pairs)),
                   "censored_idx": np.flatnonzero(np.zeros(len(self.y), bool) if self.censored is None else self.censored)}
        for name, value in derived.items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)

    @property
    def pair_names(self) -> list[str]:
        return [pair_label(s, t) for s, t in self.pairs]

    @property
    def groups(self) -> dict[str, int]:
        """How many groups each level has (a pooled site's spread is across them)."""
        return {"target": len(self.targets), "pair": len(self.pairs)}

    @property
    def finetuned(self) -> np.ndarray:
        return self.pair_idx >= 0

    @property
    def pair_target(self) -> np.ndarray:
        """Index of each pair's target."""
        return np.array([self.targets.index(t) for _, t in self.pairs], dtype=int)


# The arrays a model reads: traced when the data enter a compiled sampler as its argument (fit.py),
# so new data of the same shapes reuse it. The rest (labels, run table) is fixed structure.
_DATA_ARRAYS = ("log_N0", "log_D0", "log_p0", "x_N", "x_D", "x_p", "target_idx", "pair_idx", "kind_idx", "y",
                "censored", "pretrain_idx", "inputs", "target_onehot", "pair_onehot", "censored_idx", "ghost")


class _Structure:
    """A ModelData's fields other than its arrays. Equal when they are the same objects (a
    DataFrame has no ==): one ModelData flattened twice has one structure, so JAX reuses what
    it traced for it."""

    def __init__(self, data: ModelData):
        self.fields = {f: getattr(data, f) for f in data.__dataclass_fields__ if f not in _DATA_ARRAYS}

    def __eq__(self, other):
        return isinstance(other, _Structure) and self.fields.keys() == other.fields.keys() and all(
            v is other.fields[k] for k, v in self.fields.items())

    def __hash__(self):
        return hash(tuple(id(v) for v in self.fields.values()))


def _flatten(data: ModelData):
    return tuple(getattr(data, f) for f in _DATA_ARRAYS), _Structure(data)


def _unflatten(structure: _Structure, arrays) -> ModelData:
    data = object.__new__(ModelData)  # no __post_init__: the arrays may be tracers
    for name, value in (*structure.fields.items(), *zip(_DATA_ARRAYS, arrays)):
        object.__setattr__(data, name, value)
    return data


jax.tree_util.register_pytree_node(ModelData, _flatten, _unflatten)


RUN_BUCKET, CENSORED_BUCKET = 16, 4


def padded(data: ModelData) -> ModelData:
    """``data`` with its runs padded to a multiple of ``RUN_BUCKET`` and its censored runs to a
    multiple of ``CENSORED_BUCKET`` (none stay none): the padding ("ghost") runs copy the first
    run's inputs and are masked out of the likelihood (NumPyro evaluates them at a feasible
    placeholder and multiplies by 0), and the extra censored positions are ghosts. The
    posterior is unchanged; a sampler compiled for one grid serves every grid of the same
    padded shapes (a grid that grew by a few runs loads it from the cache)."""
    n, c = len(data.y), len(data.censored_idx)
    censored = -(-c // CENSORED_BUCKET) * CENSORED_BUCKET
    size = -(-(n + censored - c) // RUN_BUCKET) * RUN_BUCKET
    take = np.r_[np.arange(n), np.zeros(size - n, int)]

    def per_run(a):
        return None if a is None else np.asarray(a)[take]

    arrays = ("x_N", "x_D", "x_p", "target_idx", "pair_idx", "kind_idx", "y", "censored", "pretrain_idx",
              "target_onehot", "pair_onehot")
    return replace(data, **{f: per_run(getattr(data, f)) for f in arrays},
                   inputs={k: per_run(v) for k, v in data.inputs.items()},
                   censored_idx=np.r_[data.censored_idx, n + np.arange(censored - c)].astype(int),
                   ghost=np.arange(size) >= n)


def _onehot(idx: np.ndarray, n: int) -> np.ndarray:
    return np.eye(max(n, 1))[np.asarray(idx, int)]


def censored_runs(grid: Grid, runs: pd.DataFrame) -> np.ndarray:
    """Runs whose recorded loss only bounds their data-limited loss from above.

    Capped runs (stopped before early stopping) and runs whose best
    evaluation was their first after step 0 (they may have been better
    before it; a curve's step-0 evaluation is the untrained or pre-trained
    model, not a point of this run's training). A table may also say so
    itself in a boolean ``censored`` column.
    """
    out = (runs["status"] == CAPPED).to_numpy(copy=True) if "status" in runs else np.zeros(len(runs), bool)
    if "censored" in runs:
        out |= runs["censored"].astype(bool).to_numpy()
    curves = grid.curves
    if curves is not None and "curve_loss" in curves and "run" in curves.coords:
        loss = curves["curve_loss"].sel(run=runs["run"].to_numpy()).values
        finite = np.isfinite(loss)
        if "curve_tokens" in curves:
            finite &= curves["curve_tokens"].sel(run=runs["run"].to_numpy()).values > 0
        first = np.argmax(finite, axis=1)
        best = np.nanargmin(np.where(finite, loss, np.inf), axis=1)
        out |= (finite.sum(axis=1) >= 2) & (best == first)
    return out


def pretrain_groups(runs: pd.DataFrame, finetuned: np.ndarray) -> tuple[np.ndarray, list]:
    """The pre-training run each fine-tuned run starts from: the grid's ``pretrain_run`` id
    where it records one, else one per (source, size).

    A pre-training run serves every target and every pre-training amount
    (its checkpoints), so its runs share one effect.
    """
    recorded = PRETRAIN_RUN in runs and (runs.loc[finetuned, PRETRAIN_RUN].astype(str) != "").all()
    cols = [PRETRAIN_RUN] if recorded else ["source", "n_params"]
    keys = [tuple(r) for r in runs[cols].itertuples(index=False)]
    labels = sorted({k for k, f in zip(keys, finetuned) if f})
    idx = np.array([labels.index(k) if f else -1 for k, f in zip(keys, finetuned)], dtype=int)
    return idx, ["/".join(str(v) for v in k) for k in labels]


def prepare(grid, law: str, scratch_law: str = "kaplan", ossification: bool = True, n_params=None) -> ModelData:
    """The runs of ``grid`` that ``law`` uses, centred and indexed.

    Raises ``ValueError`` when the grid lacks the runs the law needs.
    ``n_params`` selects one model size (the transfer gap is a law at fixed N).
    """
    grid = load_grid(grid)
    spec = laws.get(law)
    form = laws.scratch(scratch_law if spec.kind == "transfer" else (law if spec.kind == "scratch" else "kaplan"))
    # the scratch form of a law without one (transfer gap, fine-tuning curves) is unused: "kaplan" fills the slot
    runs = grid.runs
    if n_params is not None:
        runs = runs[np.isclose(runs["n_params"], n_params, rtol=1e-9)]
        if runs.empty:
            raise ValueError(f"no runs with n_params={n_params}; the grid has {sorted(grid.runs['n_params'].unique())}")
    scratch = runs[runs["source"] == SCRATCH]
    tuned = runs[runs["source"] != SCRATCH]
    if spec.finetuned and tuned.empty:
        raise ValueError(f"law {law!r} needs fine-tuned runs (source other than {SCRATCH!r}), and the grid has none; "
                         f"fit a scratch law ({', '.join(laws.SCRATCH_LAWS)}) to from-scratch runs")
    if spec.kind == "scratch":
        if scratch.empty:
            raise ValueError(f"law {law!r} fits from-scratch runs, and the grid has none")
        used = scratch
    elif spec.kind == "transfer":
        missing = sorted(set(tuned["target"]) - set(scratch["target"]))
        if missing:
            raise ValueError(f"law 'transfer' needs from-scratch runs of each target; none for {missing}")
        used = pd.concat([scratch[scratch["target"].isin(tuned["target"])], tuned])
    elif spec.kind == "finetune":
        used = tuned  # one curve per pre-trained model and dataset; scratch runs play no part
    else:
        bad = tuned[tuned["pretrain_tokens"] <= 0]
        if not bad.empty:
            raise ValueError(f"law 'transfer_gap' needs pretrain_tokens > 0 for pre-trained runs; runs {list(bad['run'][:8])} have 0")
        used = pd.concat([scratch[scratch["target"].isin(tuned["target"])], tuned])
        sizes = sorted(used["n_params"].unique())
        if len(sizes) > 1:
            raise ValueError(f"law 'transfer_gap' is at a fixed model size; the runs have sizes {sizes}: pass n_params=")
    used = used.reset_index(drop=True)

    is_ft = (used["source"] != SCRATCH).to_numpy()
    targets = sorted(used["target"].unique())
    pairs = sorted(set(zip(used.loc[is_ft, "source"], used.loc[is_ft, "target"])))
    pair_lookup = {p: i for i, p in enumerate(pairs)}
    pair_idx = np.array([pair_lookup[(s, t)] if f else -1 for s, t, f in zip(used["source"], used["target"], is_ft)])
    kind_names = ("scratch", "pretrained" if spec.kind == "gap" else "finetuned")
    kinds = [kind_names[i] for i in (0, 1) if (is_ft == bool(i)).any()]
    kind_idx = np.array([kinds.index(kind_names[int(f)]) for f in is_ft])
    pretrain_idx, pretrain_runs = pretrain_groups(used, is_ft)

    log_N = np.log(used["n_params"].to_numpy(float))
    log_D = np.log(used["data_tokens"].to_numpy(float))
    log_N0, log_D0 = float(log_N.mean()), float(log_D.mean())
    x_p = np.zeros(len(used))
    log_p0 = 0.0
    if spec.kind == "gap":
        log_p = np.log(used.loc[is_ft, "pretrain_tokens"].to_numpy(float))
        log_p0 = float(log_p.mean())
        x_p[is_ft] = log_p - log_p0
    return ModelData(
        law=law, scratch_law=form.name, ossification=ossification, runs=used, targets=targets, pairs=pairs,
        kinds=kinds, log_N0=log_N0, log_D0=log_D0, log_p0=log_p0, x_N=log_N - log_N0, x_D=log_D - log_D0, x_p=x_p,
        target_idx=np.array([targets.index(t) for t in used["target"]]), pair_idx=pair_idx, kind_idx=kind_idx,
        y=np.log(used["loss"].to_numpy(float)), censored=censored_runs(grid, used),
        pretrain_idx=pretrain_idx, pretrain_runs=pretrain_runs,
        inputs=form.inputs(used) if spec.kind in ("scratch", "transfer") else {},
    )


# ------------------------------------------------------------------ building blocks


def _group(site: laws.Site, prior, tau_prior, n: int, plate: str):
    """Per-group values of a site on its natural scale, partially pooled.

    The population value is drawn from ``prior`` and moved to the log/logit
    scale; groups are Normal(population, tau) there, sampled non-centred when
    the site asks for it (``site.noncentred``) or the groups are few targets
    (``laws.FEW_GROUPS``), centred otherwise. tau = 0 makes the groups share the
    population value.
    """
    if site.scale == "free":
        with numpyro.plate(plate, n):
            return numpyro.sample(site.name, prior)
    to_u, from_u = (jnp.log, jnp.exp) if site.scale == "log" else (laws.logit, jax.nn.sigmoid)
    mu = numpyro.sample(f"{site.name}_mu", prior)
    u_mu = to_u(mu)
    if n == 1 or (not isinstance(tau_prior, dist.Distribution) and tau_prior == 0):
        return from_u(jnp.broadcast_to(u_mu, (n,)))
    tau = numpyro.sample(f"{site.name}_tau", tau_prior) if isinstance(tau_prior, dist.Distribution) else tau_prior
    name = f"{site.name}_u"
    with numpyro.plate(plate, n):
        if not (site.noncentred or (plate == "target" and n < laws.FEW_GROUPS)):
            return from_u(numpyro.sample(name, dist.Normal(u_mu, tau)))
        with numpyro.handlers.reparam(config={name: LocScaleReparam(centered=0.0)}):
            return from_u(numpyro.sample(name, dist.Normal(u_mu, tau)))


def _sample(sites, priors, sizes: dict, level: dict, skip=()) -> dict:
    """Values of each site, per target or per pair (``level``: site -> "target"/"pair")."""
    out = {}
    for site in sites:
        if site.name in skip:
            continue
        lv = level.get(site.name, "pair")
        out[site.name] = _group(site, priors[site.name], priors.get(f"tau_{site.name}"), sizes[lv], lv)
    return out


def _per_run(values, onehot):
    """Per-group values (last axis) read per run, as a product with the run x group one-hot
    matrix (``ModelData.target_onehot``, ``pair_onehot``). An indexed read's gradient is a
    scatter-add, which XLA's CPU code runs slowly: this halves the gradient of the transfer and
    gap models on the shipped two-source and gap grids (benchmarks/fit_cost_breakdown.py)."""
    return values @ jnp.asarray(onehot).T


def _record(natural: dict) -> None:
    for name, value in natural.items():
        numpyro.deterministic(name, value)


class UpperBounded(dist.Distribution):
    """Student-t on log-loss where ``censored`` runs only bound the value from above.

    log_prob: the density for exact runs, log P(Y <= y) for censored ones;
    samples are the latent value (what the run would have reached).
    """

    arg_constraints = {}
    support = dist.constraints.real

    def __init__(self, base: dist.StudentT, censored_idx):
        self.base = base
        self.censored_idx = censored_idx  # positions of the censored runs (their number fixes the shape)
        super().__init__(batch_shape=base.batch_shape)

    def sample(self, key, sample_shape=()):
        return self.base.sample(key, sample_shape)

    def log_prob(self, value):
        # the CDF (two incomplete beta functions) only where a run is censored: computed for
        # every run, it made the gradient 1.3-1.9x dearer on the shipped two-source and gap grids
        base, i = self.base, self.censored_idx
        exact = base.log_prob(value)
        at = lambda x: jnp.broadcast_to(x, exact.shape)[..., i]
        bound = student_t_log_cdf((at(value) - at(base.loc)) / at(base.scale), at(base.df))
        return exact.at[..., i].set(bound)


def student_t_log_cdf(t, df):
    """log P(T <= t) for Student-t with ``df`` degrees of freedom, with a finite gradient everywhere.

    NumPyro's CDF goes through I_x(df/2, 1/2) at x = df / (df + t^2), whose derivative holds
    (1 - x)^(-1/2): near t = 0, 1 - x cancels to 0 and the gradient is NaN (within about 1e-8
    scales of the centre), a divergent transition for NUTS. For |t| <= 1 this uses the
    complementary form I_y(1/2, df/2), y = t^2 / (df + t^2), which has no cancellation there;
    beyond, the first form, which then has none either (and keeps the tails' precision).
    """
    far = jnp.abs(t) > 1.0
    t_far = jnp.where(far, t, 2.0)
    tail = 0.5 * betainc(0.5 * df, 0.5, df / (df + t_far * t_far))  # P(T > |t|)
    log_far = jnp.where(t_far < 0, jnp.log(jnp.maximum(tail, 1e-300)), jnp.log1p(-tail))
    zero = t == 0.0
    t_near = jnp.where(far | zero, 0.5, t)
    y = t_near * t_near / (df + t_near * t_near)
    log_near = jnp.log(0.5 * (1.0 + jnp.sign(t_near) * betainc(0.5, 0.5 * df, y)))
    return jnp.where(far, log_far, jnp.where(zero, jnp.log(0.5), log_near))


def _likelihood(data: ModelData, priors: dict, mu, y):
    with numpyro.plate("kind", len(data.kinds)):
        sigma = numpyro.sample("sigma", priors["sigma"])
    nu = priors["nu"]
    nu = numpyro.sample("nu", nu) if isinstance(nu, dist.Distribution) else numpyro.deterministic("nu", jnp.asarray(float(nu)))
    if data.pretrain_runs and "sigma_pretrain" in priors:
        scale = numpyro.sample("sigma_pretrain", priors["sigma_pretrain"])
        with numpyro.plate("pretrain_run", len(data.pretrain_runs)):
            z = numpyro.sample("pretrain_z", dist.Normal(0.0, 1.0))
        mu = mu + jnp.where(data.pretrain_idx >= 0, scale * z[jnp.maximum(data.pretrain_idx, 0)], 0.0)
    base = dist.StudentT(nu, mu, sigma[data.kind_idx])
    padding = contextlib.nullcontext() if data.ghost is None else numpyro.handlers.mask(mask=~data.ghost)
    with numpyro.plate("run", len(data.y)), padding:
        numpyro.sample("log_loss", UpperBounded(base, data.censored_idx) if len(data.censored_idx) else base, obs=y)


# ------------------------------------------------------------------ the models


def scratch_model(data: ModelData, priors: dict, y=None):
    """From-scratch law (``data.law``, a scratch law of laws.py) per target, pooled.

    log L_r ~ StudentT(nu, log L_scratch(N_r, D_r; theta_target(r)), sigma)
    """
    form = laws.scratch(data.law)
    s = _sample(form.sites, priors, {"target": len(data.targets)}, form.level | {x.name: "target" for x in form.sites})
    _record(form.natural(s, data))
    t = data.target_idx
    mu = form.log_loss_centred(data.x_N, data.x_D, {k: v[t] for k, v in s.items()}, data.inputs)
    _likelihood(data, priors, mu, y)


def transfer_model(data: ModelData, priors: dict, y=None):
    """Joint scratch + transfer law (Hernandez et al. 2021, Eq. 6.1), hierarchical.

    scratch runs:    log L = log L_scratch(N, D; theta_t)
    fine-tuned runs: log L = log L_scratch(N, D_E; theta_t),
                     D_E = D_F (1 - omega) + k D_F^alpha N^beta    (per pair)

    With ``omega = 0`` (``ossification=False``) this is the paper's law and
    D_T = D_E - D_F > 0 always. The ``omega`` term is this package's
    extension: it lets pre-training hurt (D_T < 0 when omega D_F exceeds
    k D_F^alpha N^beta: small N, large D_F), with a prior concentrated near
    0 so the data must ask for it.
    """
    form, law = laws.scratch(data.scratch_law), laws.TRANSFER
    sizes = data.groups
    s_scr = _sample(form.sites, priors, sizes, {x.name: "target" for x in form.sites})
    s_tr = _sample(law.sites, priors, sizes, {}, skip=() if data.ossification else ("omega",))
    if not data.ossification:
        s_tr["omega"] = numpyro.deterministic("omega", jnp.zeros(len(data.pairs)))
    _record(form.natural(s_scr, data))
    _record(law.natural(s_tr, data))
    j, t = data.pair_onehot, data.target_onehot
    x_DE = laws.transfer_log_effective_data(data.x_N, data.x_D, {k: _per_run(v, j) for k, v in s_tr.items()})
    x_D = jnp.where(data.finetuned, x_DE, data.x_D)
    mu = form.log_loss_centred(data.x_N, x_D, {k: _per_run(v, t) for k, v in s_scr.items()}, data.inputs)
    _likelihood(data, priors, mu, y)


def transfer_gap_model(data: ModelData, priors: dict, y=None):
    """Transfer gap (Barnett 2024, as read here) at one model size, hierarchical.

    pre-trained runs (p > 0): L = (A_p p^-alpha_p + G) f^-alpha_f + E      (per pair: A_p, alpha_p, G)
    scratch runs (p = 0):     L = C_0 f^-alpha_f + E                       (per target: C_0, alpha_f, E)

    p^-alpha_p diverges at p = 0, so scratch runs get their own coefficient
    C_0; they share the target's fine-tuning exponent alpha_f and floor E
    with the pre-trained runs, which is what ties the two together. The
    coefficients are sampled as their terms at the grid centre (laws.py).
    """
    law = laws.TRANSFER_GAP
    s = _sample(law.sites, priors, data.groups, law.site_level)
    _record(law.natural(s, data))
    t, j, ft = data.target_onehot, data.pair_onehot, data.finetuned
    log = {k: jnp.log(v) for k, v in s.items() if k not in ("alpha_f", "alpha_p")}
    pre = laws.log_transfer_gap(data.x_p, data.x_D, _per_run(log["A_p_term"], j), _per_run(s["alpha_p"], j),
                                _per_run(log["G_term"], j), _per_run(s["alpha_f"], t), _per_run(log["E"], t))
    scr = laws.log_gap_scratch(data.x_D, _per_run(log["C_0_term"], t), _per_run(s["alpha_f"], t), _per_run(log["E"], t))
    _likelihood(data, priors, jnp.where(ft, pre, scr), y)


def finetune_model(data: ModelData, priors: dict, y=None):
    """Fine-tuning curves (Lin et al. 2024's rectified law), one per pre-trained model and dataset.

    L = L0 (1 - w + w (r + 1) / (r + (D_F / D0)^beta))     (per pair: L0, w, beta, r)

    Each pair is fitted on its own (the sites are unpooled, ``laws.RECTIFIED``
    says why); there are no scratch runs and no pre-training effect (each
    pair's own L0 and w absorb it).
    """
    law = laws.RECTIFIED
    s = _sample(law.sites, priors, {"pair": len(data.pairs)}, law.level | {x.name: "pair" for x in law.sites})
    _record(law.natural(s, data))
    j = data.pair_idx
    _likelihood(data, priors, laws.log_rectified_centred(data.x_D, {k: v[j] for k, v in s.items()}), y)


def model_for(law: str):
    return {"scratch": scratch_model, "transfer": transfer_model, "gap": transfer_gap_model,
            "finetune": finetune_model}[laws.get(law).kind]


# ------------------------------------------------------------------ simulation


def simulate_losses(design, law: str, params: dict, *, scratch_law: str = "kaplan", sigma=0.01, nu=None, seed=0):
    """Losses for a design table drawn from a law with known natural-scale parameters.

    ``design``: a DataFrame of runs (``n_params``, ``data_tokens``, optional
    ``target``, ``source``, ``pretrain_tokens``, ``seed``, ``tokens_seen``).
    ``params`` maps each parameter name to a number (shared) or a dict keyed
    by target (for scratch/gap target parameters) or by (source, target)
    (pair parameters). Noise: log-loss + sigma x (standard normal, or
    Student-t with ``nu``). Returns the design with a ``loss`` column: the
    grid for recovery tests.
    """
    df = design.copy()
    for col, default in (("target", "target"), ("source", SCRATCH), ("pretrain_tokens", 0.0), ("seed", 0)):
        if col not in df.columns:
            df[col] = default
    spec = laws.get(law)

    def value(name, key):
        v = params[name]
        return v[key] if isinstance(v, dict) else v

    N = df["n_params"].to_numpy(float)
    D = df["data_tokens"].to_numpy(float)
    ft = (df["source"] != SCRATCH).to_numpy()
    form = laws.scratch(law if spec.kind == "scratch" else scratch_law) if spec.kind in ("scratch", "transfer") else None
    inputs = form.inputs(df) if form is not None else {}
    mu = np.empty(len(df))
    for i, row in enumerate(df.itertuples()):
        tgt, pair = row.target, (row.source, row.target)
        if spec.kind == "finetune":
            if not ft[i]:
                raise ValueError(f"law {law!r} describes fine-tuned runs only; the design has a from-scratch row")
            loss = laws.rectified(D[i], *(value(k, pair) for k in ("B", "D_l", "beta", "E")))
        elif spec.kind == "gap":
            q = {k: value(k, tgt) for k in spec.params if spec.level[k] == "target"}
            if ft[i]:
                q.update({k: value(k, pair) for k in spec.params if spec.level[k] == "pair"})
                loss = laws.transfer_gap(row.pretrain_tokens, D[i], q["A_p"], q["alpha_p"], q["G"], q["alpha_f"], q["E"])
            else:
                loss = laws.gap_scratch(D[i], q["C_0"], q["alpha_f"], q["E"])
        else:
            p = {k: value(k, tgt) for k in form.params}
            d_eff = D[i]
            if ft[i]:
                if spec.kind != "transfer":
                    raise ValueError(f"law {law!r} has no fine-tuned runs; use 'transfer'")
                tp = {k: value(k, pair) for k in ("k", "alpha", "beta")}
                tp["omega"] = value("omega", pair) if "omega" in params else 0.0
                d_eff = D[i] + laws.transferred(N[i], D[i], tp)
            loss = form.loss(N[i], d_eff, p, **{k: v[i] for k, v in inputs.items()})
        mu[i] = float(np.log(loss))
    rng = np.random.default_rng(seed)
    eps = rng.standard_t(nu, len(df)) if nu else rng.standard_normal(len(df))
    df["loss"] = np.exp(mu + sigma * eps)
    return df


def design_grid(sizes, data_tokens, *, sources=(), target="target", pretrain_tokens=1e8, seeds=(0,)):
    """A full-factorial design: every size x data amount, from scratch and from each source."""
    rows = [
        dict(target=target, source=src, n_params=float(n), data_tokens=float(d), pretrain_tokens=0.0 if src == SCRATCH else float(pretrain_tokens), seed=s)
        for src in (SCRATCH, *sources)
        for n in sizes
        for d in data_tokens
        for s in seeds
    ]
    return pd.DataFrame(rows)


def simulate_grid(design, law, params, **kwargs) -> Grid:
    """``simulate_losses`` loaded as a Grid."""
    return load_grid(simulate_losses(design, law, params, **kwargs))
