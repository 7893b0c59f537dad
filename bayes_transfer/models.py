"""NumPyro models of the laws: scratch, joint scratch + transfer, transfer gap.

Each model is one function ``model(data, priors, y=None)``: with ``y`` it is
the likelihood, without it the prior-predictive simulator (simulation-based
calibration uses it that way; ``simulate_losses`` instead draws a grid from
the laws at parameters one chooses). ``data`` is a ``ModelData`` built from a ``Grid`` by
``prepare``: log inputs centred on their grid means, group indices, run
kinds.

Structure (all on the log scale; (0, 1) parameters on the logit scale):

- each target has its own scratch law, its parameters partially pooled
  across targets (Normal(population value, ``tau``) on the log or logit
  scale; centred or non-centred per parameter, see ``NONCENTRED``); with
  one target the population value is the target's;
- each (source, target) pair has its own transfer (or gap) parameters,
  partially pooled across pairs in the same way; ``beta`` has a tight
  pooling scale, as it is expected to be shared; the ossification
  fraction ``omega`` is per pair, unpooled;
- noise: Student-t on log-loss with one scale per run kind (scratch,
  fine-tuned); seed replicates of a cell inform that scale directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pandas as pd
from numpyro.infer.reparam import LocScaleReparam

from bayes_transfer import laws
from bayes_transfer.grid import SCRATCH, Grid, load_grid, pair_name

LAWS = ("kaplan", "chinchilla", "transfer", "transfer_gap")
# natural-scale parameter names, as they appear in a posterior
PARAMS = {
    "kaplan": ("N_c", "D_c", "alpha_N", "alpha_D"),
    "chinchilla": ("E", "A", "B", "alpha_N", "alpha_D"),
    "transfer": ("k", "alpha", "beta", "omega"),
    "transfer_gap": ("A_p", "alpha_p", "G", "alpha_f", "E", "C_0"),
}
# Pooled parameters sampled non-centred; the others are centred. Groups are
# few (2-6), and a parameter that its group's runs pin down samples far
# better centred (log k and the scratch laws; measured on a 2-pair transfer
# grid: 45 vs 410 leapfrog steps per draw), with zero-avoiding Gamma(2)
# scale priors to keep off the funnel's neck. alpha is looser (posterior sd
# ~0.3 on the log scale, as large as its spread across pairs): centred it
# diverged (4-8 per 1,000 draws), non-centred none. beta's scale is fixed
# and small (priors.py).
NONCENTRED = frozenset({"beta", "alpha"})


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

    @property
    def pair_names(self) -> list[str]:
        return [pair_name(s, t) for s, t in self.pairs]

    @property
    def finetuned(self) -> np.ndarray:
        return self.pair_idx >= 0


def prepare(grid, law: str, scratch_law: str = "kaplan", ossification: bool = True, n_params=None) -> ModelData:
    """The runs of ``grid`` that ``law`` uses, centred and indexed.

    Raises ``ValueError`` when the grid lacks the runs the law needs.
    ``n_params`` selects one model size (the transfer gap is a law at fixed N).
    """
    grid = load_grid(grid)
    if law not in LAWS:
        raise ValueError(f"unknown law {law!r}; expected one of {LAWS}")
    if scratch_law not in laws.SCRATCH_LAWS:
        raise ValueError(f"unknown scratch_law {scratch_law!r}; expected one of {laws.SCRATCH_LAWS}")
    runs = grid.runs
    if n_params is not None:
        runs = runs[np.isclose(runs["n_params"], n_params, rtol=1e-9)]
        if runs.empty:
            raise ValueError(f"no runs with n_params={n_params}; the grid has {sorted(grid.runs['n_params'].unique())}")
    scratch = runs[runs["source"] == SCRATCH]
    tuned = runs[runs["source"] != SCRATCH]
    if law in ("kaplan", "chinchilla"):
        if scratch.empty:
            raise ValueError(f"law {law!r} fits from-scratch runs, and the grid has none")
        used = scratch
    elif law == "transfer":
        if tuned.empty:
            raise ValueError("law 'transfer' needs fine-tuned runs (source other than 'none'), and the grid has none")
        missing = sorted(set(tuned["target"]) - set(scratch["target"]))
        if missing:
            raise ValueError(f"law 'transfer' needs from-scratch runs of each target; none for {missing}")
        used = pd.concat([scratch[scratch["target"].isin(tuned["target"])], tuned])
    else:
        if tuned.empty:
            raise ValueError("law 'transfer_gap' needs pre-trained runs (source other than 'none'), and the grid has none")
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
    kind_names = ("scratch", "pretrained" if law == "transfer_gap" else "finetuned")
    kinds = [kind_names[i] for i in (0, 1) if (is_ft == bool(i)).any()]
    kind_idx = np.array([kinds.index(kind_names[int(f)]) for f in is_ft])

    log_N = np.log(used["n_params"].to_numpy(float))
    log_D = np.log(used["data_tokens"].to_numpy(float))
    log_N0, log_D0 = float(log_N.mean()), float(log_D.mean())
    x_p = np.zeros(len(used))
    log_p0 = 0.0
    if law == "transfer_gap":
        log_p = np.log(used.loc[is_ft, "pretrain_tokens"].to_numpy(float))
        log_p0 = float(log_p.mean())
        x_p[is_ft] = log_p - log_p0
    return ModelData(
        law=law,
        scratch_law=scratch_law,
        ossification=ossification,
        runs=used,
        targets=targets,
        pairs=pairs,
        kinds=kinds,
        log_N0=log_N0,
        log_D0=log_D0,
        log_p0=log_p0,
        x_N=log_N - log_N0,
        x_D=log_D - log_D0,
        x_p=x_p,
        target_idx=np.array([targets.index(t) for t in used["target"]]),
        pair_idx=pair_idx,
        kind_idx=kind_idx,
        y=np.log(used["loss"].to_numpy(float)),
    )


# ------------------------------------------------------------------ building blocks


def _mean(d):
    """A prior's mean (an array: inside a traced model it may not become a float)."""
    return d.mean


def _group(name, prior, tau_prior, n, plate, scale="log", shift=0.0):
    """Per-group values of a parameter on its unconstrained scale, partially pooled.

    The population value is drawn from ``prior`` (natural scale) and moved to
    the log/logit scale (plus ``shift``, see priors.py on centring); groups
    are Normal(population, tau), sampled centred or not (``NONCENTRED``).
    """
    mu = numpyro.sample(f"{name}_mu", prior)
    u_mu = (jnp.log(mu) if scale == "log" else laws.logit(mu)) + shift
    if n == 1:
        return jnp.reshape(u_mu, (1,))
    tau = numpyro.sample(f"{name}_tau", tau_prior) if isinstance(tau_prior, dist.Distribution) else tau_prior
    site = f"{name}_u"
    with numpyro.plate(plate, n):
        if name not in NONCENTRED:
            return numpyro.sample(site, dist.Normal(u_mu, tau))
        with numpyro.handlers.reparam(config={site: LocScaleReparam(centered=0.0)}):
            return numpyro.sample(site, dist.Normal(u_mu, tau))


def _scratch_params(data: ModelData, priors: dict, law: str):
    """Per-target scratch-law parameters; returns a function x_N, x_D, target_idx -> log L."""
    n = len(data.targets)
    if law == "kaplan":
        log_L0 = _group("L0", priors["L0"], priors["tau_L0"], n, "target")
        logit_w = _group("w", priors["w"], priors["tau_w"], n, "target", scale="logit")
        log_aN = _group("alpha_N", priors["alpha_N"], priors["tau_alpha_N"], n, "target")
        log_aD = _group("alpha_D", priors["alpha_D"], priors["tau_alpha_D"], n, "target")
        w, aN, aD = jax.nn.sigmoid(logit_w), jnp.exp(log_aN), jnp.exp(log_aD)
        N_c, D_c = laws.kaplan_from_centred(data.log_N0, data.log_D0, log_L0, w, aN, aD)
        numpyro.deterministic("N_c", N_c)
        numpyro.deterministic("D_c", D_c)
        numpyro.deterministic("alpha_N", aN)
        numpyro.deterministic("alpha_D", aD)

        def log_loss(x_N, x_D, t):
            return laws.log_kaplan_centred(x_N, x_D, log_L0[t], w[t], aN[t], aD[t])

        return log_loss
    if law == "chinchilla":
        m_aN, m_aD = _mean(priors["alpha_N"]), _mean(priors["alpha_D"])
        log_E = _group("E", priors["E"], priors["tau_E"], n, "target")
        log_A0 = _group("A", priors["A"], priors["tau_A"], n, "target", shift=-m_aN * data.log_N0)
        log_B0 = _group("B", priors["B"], priors["tau_B"], n, "target", shift=-m_aD * data.log_D0)
        aN = jnp.exp(_group("alpha_N", priors["alpha_N"], priors["tau_alpha_N"], n, "target"))
        aD = jnp.exp(_group("alpha_D", priors["alpha_D"], priors["tau_alpha_D"], n, "target"))
        numpyro.deterministic("E", jnp.exp(log_E))
        numpyro.deterministic("A", jnp.exp(log_A0 + aN * data.log_N0))
        numpyro.deterministic("B", jnp.exp(log_B0 + aD * data.log_D0))
        numpyro.deterministic("alpha_N", aN)
        numpyro.deterministic("alpha_D", aD)

        def log_loss(x_N, x_D, t):
            return laws.log_chinchilla(x_N, x_D, log_E[t], log_A0[t], log_B0[t], aN[t], aD[t])

        return log_loss
    raise ValueError(f"unknown scratch law {law!r}")


def _likelihood(data: ModelData, priors: dict, mu, y):
    with numpyro.plate("kind", len(data.kinds)):
        sigma = numpyro.sample("sigma", priors["sigma"])
    nu = priors["nu"]
    nu = numpyro.sample("nu", nu) if isinstance(nu, dist.Distribution) else numpyro.deterministic("nu", jnp.asarray(float(nu)))
    with numpyro.plate("run", len(data.y)):
        numpyro.sample("log_loss", dist.StudentT(nu, mu, sigma[data.kind_idx]), obs=y)


# ------------------------------------------------------------------ the models


def scratch_model(data: ModelData, priors: dict, y=None):
    """From-scratch law (``data.law``: kaplan or chinchilla) per target, pooled.

    log L_r ~ StudentT(nu, log L_scratch(N_r, D_r; theta_target(r)), sigma)
    """
    log_loss = _scratch_params(data, priors, data.law)
    _likelihood(data, priors, log_loss(data.x_N, data.x_D, data.target_idx), y)


def transfer_model(data: ModelData, priors: dict, y=None):
    """Joint scratch + transfer law (Hernandez et al. 2021, Eq. 6.1), hierarchical.

    scratch runs:    log L = log L_scratch(N, D; theta_t)
    fine-tuned runs: log L = log L_scratch(N, D_E; theta_t),
                     D_E = D_F (1 - omega) + k D_F^alpha N^beta    (per pair)

    With ``omega = 0`` (``ossification=False``) this is the paper's law and
    D_T = D_E - D_F > 0 always. The ``omega`` term is this package's
    extension: it lets pre-training hurt (D_T < 0 when omega D_F exceeds
    k D_F^alpha N^beta: small N, large D_F, as in Hernandez Fig. 5), with a
    prior concentrated near 0 so the data must ask for it.
    """
    log_loss = _scratch_params(data, priors, data.scratch_law)
    n = len(data.pairs)
    m_alpha, m_beta = _mean(priors["alpha"]), _mean(priors["beta"])
    # log D_T at the grid centre (log D0, log N0); see priors.py
    log_T0 = _group("k", priors["k"], priors["tau_k"], n, "pair", shift=m_alpha * data.log_D0 + m_beta * data.log_N0)
    alpha = jnp.exp(_group("alpha", priors["alpha"], priors["tau_alpha"], n, "pair"))
    beta = jnp.exp(_group("beta", priors["beta"], priors["tau_beta"], n, "pair"))
    numpyro.deterministic("k", jnp.exp(log_T0 - alpha * data.log_D0 - beta * data.log_N0))
    numpyro.deterministic("alpha", alpha)
    numpyro.deterministic("beta", beta)
    if data.ossification:
        with numpyro.plate("pair", n):
            omega = numpyro.sample("omega", priors["omega"])
    else:
        omega = numpyro.deterministic("omega", jnp.zeros(n))

    ft = data.finetuned
    j = np.where(ft, data.pair_idx, 0)
    log_DT = log_T0[j] + alpha[j] * data.x_D + beta[j] * data.x_N  # centred: log D_T - log D0 + log D0
    x_DE = laws.log_effective_finetune_data(data.x_D, log_DT - data.log_D0, omega[j])
    x_D = jnp.where(ft, x_DE, data.x_D)
    _likelihood(data, priors, log_loss(data.x_N, x_D, data.target_idx), y)


def transfer_gap_model(data: ModelData, priors: dict, y=None):
    """Transfer gap (Barnett 2024, as read here) at one model size, hierarchical.

    pre-trained runs (p > 0): L = (A_p p^-alpha_p + G) f^-alpha_f + E      (per pair: A_p, alpha_p, G)
    scratch runs (p = 0):     L = C_0 f^-alpha_f + E                       (per target: C_0, alpha_f, E)

    p^-alpha_p diverges at p = 0, so scratch runs get their own coefficient
    C_0; they share the target's fine-tuning exponent alpha_f and floor E
    with the pre-trained runs, which is what ties the two together.
    """
    nt, npair = len(data.targets), len(data.pairs)
    log_f0 = data.log_D0
    m_ap, m_af = _mean(priors["alpha_p"]), _mean(priors["alpha_f"])
    alpha_f = jnp.exp(_group("alpha_f", priors["alpha_f"], priors["tau_alpha_f"], nt, "target"))
    log_E = _group("E", priors["E"], priors["tau_E"], nt, "target")
    log_C0 = _group("C_0", priors["C_0"], priors["tau_C_0"], nt, "target", shift=-m_af * log_f0)
    alpha_p = jnp.exp(_group("alpha_p", priors["alpha_p"], priors["tau_alpha_p"], npair, "pair"))
    log_A0 = _group("A_p", priors["A_p"], priors["tau_A_p"], npair, "pair", shift=-m_ap * data.log_p0 - m_af * log_f0)
    log_G0 = _group("G", priors["G"], priors["tau_G"], npair, "pair", shift=-m_af * log_f0)
    t, ft = data.target_idx, data.finetuned
    j = np.where(ft, data.pair_idx, 0)
    numpyro.deterministic("alpha_f", alpha_f)
    numpyro.deterministic("E", jnp.exp(log_E))
    numpyro.deterministic("C_0", jnp.exp(log_C0 + alpha_f * log_f0))
    # A_p and G multiply f^-alpha_f of their pair's target
    pt = np.array([data.targets.index(tg) for _, tg in data.pairs])
    numpyro.deterministic("alpha_p", alpha_p)
    numpyro.deterministic("A_p", jnp.exp(log_A0 + alpha_p * data.log_p0 + alpha_f[pt] * log_f0))
    numpyro.deterministic("G", jnp.exp(log_G0 + alpha_f[pt] * log_f0))
    pre = laws.log_transfer_gap(data.x_p, data.x_D, log_A0[j], alpha_p[j], log_G0[j], alpha_f[t], log_E[t])
    scr = laws.log_gap_scratch(data.x_D, log_C0[t], alpha_f[t], log_E[t])
    _likelihood(data, priors, jnp.where(ft, pre, scr), y)


MODELS = {"kaplan": scratch_model, "chinchilla": scratch_model, "transfer": transfer_model, "transfer_gap": transfer_gap_model}


def model_for(law: str):
    return MODELS[law]


# ------------------------------------------------------------------ simulation


def simulate_losses(design, law: str, params: dict, *, scratch_law: str = "kaplan", sigma=0.01, nu=None, seed=0):
    """Losses for a design table drawn from a law with known natural-scale parameters.

    ``design``: a DataFrame of runs (``n_params``, ``data_tokens``, optional
    ``target``, ``source``, ``pretrain_tokens``, ``seed``). ``params`` maps
    each parameter name to a number (shared) or a dict keyed by target (for
    scratch/gap target parameters) or by (source, target) (pair parameters).
    Noise: log-loss + sigma x (standard normal, or Student-t with ``nu``).
    Returns the design with a ``loss`` column: the grid for recovery tests.
    """
    df = design.copy()
    for col, default in (("target", "target"), ("source", SCRATCH), ("pretrain_tokens", 0.0), ("seed", 0)):
        if col not in df.columns:
            df[col] = default

    def value(name, key):
        v = params[name]
        return v[key] if isinstance(v, dict) else v

    N = df["n_params"].to_numpy(float)
    D = df["data_tokens"].to_numpy(float)
    ft = (df["source"] != SCRATCH).to_numpy()
    mu = np.empty(len(df))
    for i, row in enumerate(df.itertuples()):
        tgt, pair = row.target, (row.source, row.target)
        if law == "transfer_gap":
            gp = {k: value(k, tgt) for k in ("alpha_f", "E")}
            if ft[i]:
                loss = laws.transfer_gap(row.pretrain_tokens, D[i], value("A_p", pair), value("alpha_p", pair), value("G", pair), **gp)
            else:
                loss = laws.gap_scratch(D[i], value("C_0", tgt), **gp)
        else:
            form = law if law in laws.SCRATCH_LAWS else scratch_law
            sp = {k: value(k, tgt) for k in PARAMS[form]}
            d_eff = D[i]
            if ft[i]:
                if law != "transfer":
                    raise ValueError(f"law {law!r} has no fine-tuned runs; use 'transfer'")
                omega = value("omega", pair) if "omega" in params else 0.0
                d_eff = D[i] * (1 - omega) + float(laws.transferred_data(D[i], N[i], value("k", pair), value("alpha", pair), value("beta", pair)))
            loss = (laws.kaplan if form == "kaplan" else laws.chinchilla)(N[i], d_eff, **sp)
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
