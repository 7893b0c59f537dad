"""The laws, one definition each: formula, parameters, default priors, the runs they need.

A law is an object in ``LAWS`` (see ``docs/laws.md`` for the science and
``docs/notation.md`` for the symbols). Everything else dispatches through
it: the NumPyro models sample its ``sites``, the fit names the posterior's
dims from its ``params`` and ``level``, and the posterior quantities,
allocation, tables and figures evaluate its natural-scale functions.

Natural-scale functions (``loss``, ``floor``, ``invert``, ``transferred``)
use only arithmetic operators and ``where``, so one function serves NumPy,
JAX and xarray arrays (per posterior draw, with dims kept). The ``log_*``
forms take centred log inputs and serve the models: log-sum-exp, finite and
well conditioned over many orders of magnitude.

Sites are what the sampler draws. They are scale-free where possible (a
loss at the grid centre, a share, an exponent, the transferred-to-
fine-tuning data ratio at the grid centre), so a prior means the same on
any grid; ``natural`` maps them to the published parameterisation. No prior
uses a published value: those sit beside results only (``published.py``).

Adding a law: write its functions and one ``ScratchLaw`` (or ``Law``) entry
below, with its sites and default priors, and test it (tests/test_laws.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import xarray as xr
from jax.scipy.special import logsumexp

# ------------------------------------------------------------------ array helpers


def where(cond, a, b):
    """``where`` for xarray, JAX or NumPy inputs, keeping the input's kind."""
    if any(isinstance(v, xr.DataArray) for v in (cond, a, b)):
        return xr.where(cond, a, b)
    if any(isinstance(v, jax.Array) for v in (cond, a, b)):
        return jnp.where(cond, a, b)
    return np.where(cond, a, b)


def exp(x):
    """``exp`` for xarray, JAX (traced too) or NumPy inputs."""
    return jnp.exp(x) if isinstance(x, jax.Array) else np.exp(x)


def expm1(x):
    """``exp(x) - 1``, accurate near 0, for xarray, JAX or NumPy inputs."""
    return jnp.expm1(x) if isinstance(x, jax.Array) else np.expm1(x)


def _lse(*terms):
    return logsumexp(jnp.stack(jnp.broadcast_arrays(*terms)), axis=0)


def logit(x):
    """Inverse of ``jax.nn.sigmoid``, used for the (0, 1) parameters."""
    return jnp.log(x) - jnp.log1p(-x)


# ------------------------------------------------------------------ default priors

# Fewer groups than this barely inform a spread across them: the spread's posterior
# is then mostly its prior. Fewer targets than this are sampled non-centred: Gadre et al.'s
# three corpora diverged 47 times centred and never non-centred. Pair-level sites stay centred
# (unless their Site says otherwise): each pair's fine-tuned runs pin its transfer ratio, and with
# two pairs it took 307 leapfrog steps per draw non-centred against 69 centred (the 108-run
# benchmark grid, benchmarks/fit_cost_breakdown.py).
FEW_GROUPS = 5

# One weakly informative prior for every power-law exponent: median 0.25,
# 90% between 0.05 and 1.3. Wide enough that a grid decides, narrow enough to
# rule out exponents no learning curve shows.
def EXPONENT():
    return dist.LogNormal(float(np.log(0.25)), 1.0)


def TERM():
    """A term of the loss at the grid centre, nats per token: median 0.5, 90% 0.04 to 6."""
    return dist.LogNormal(float(np.log(0.5)), 1.5)


@dataclass(frozen=True)
class Site:
    """A quantity the sampler draws per group (target or pair), partially pooled.

    ``scale``: "log" (positive), "logit" (in (0, 1)) or "free" (drawn per
    group from its prior, not pooled). ``tau``: default prior
    (or fixed number) of the spread across groups on that scale.
    ``noncentred``: sample the group values non-centred (loose parameters).
    ``few``: the spread, fixed, when there are 2 to ``FEW_GROUPS - 1`` groups,
    too few to learn it (None: learnt under ``tau`` however few).
    """

    name: str
    prior: Callable[[], dist.Distribution]
    tau: Callable[[], object]
    scale: str = "log"
    noncentred: bool = False
    meaning: str = ""
    few: float | None = None


# ------------------------------------------------------------------ Kaplan


def kaplan(N, D, N_c, D_c, alpha_N, alpha_D):
    """Kaplan et al. (2020): L = [(N_c/N)^(alpha_N/alpha_D) + D_c/D]^alpha_D."""
    return ((N_c / N) ** (alpha_N / alpha_D) + D_c / D) ** alpha_D


def log_kaplan_centred(x_N, x_D, log_L0, w, alpha_N, alpha_D):
    """The Kaplan law about a centre (N0, D0), as the models sample it.

    x_N = log(N/N0), x_D = log(D/D0); L0 is the loss at the centre and w the
    share of the bracket that the N term holds there. The data pin L0 down
    directly, which removes the alpha_D-versus-scale ridge that makes NUTS
    slow on the raw parameters. ``kaplan_from_centred`` maps back.
    """
    return log_L0 + alpha_D * _lse(jnp.log(w) - (alpha_N / alpha_D) * x_N, jnp.log1p(-w) - x_D)


def kaplan_from_centred(log_N0, log_D0, log_L0, w, alpha_N, alpha_D):
    """(N_c, D_c) of the centred Kaplan parameterisation."""
    s = log_L0 / alpha_D
    return jnp.exp(log_N0 + (s + jnp.log(w)) * alpha_D / alpha_N), jnp.exp(log_D0 + s + jnp.log1p(-w))


# ------------------------------------------------------------------ Chinchilla and the data-constrained form


def chinchilla(N, D, E, A, B, alpha_N, alpha_D):
    """Hoffmann et al. (2022): L = E + A N^-alpha_N + B D^-alpha_D."""
    return E + A * N ** -alpha_N + B * D ** -alpha_D


def log_chinchilla(log_N, log_D, log_E, log_A, log_B, alpha_N, alpha_D):
    """log L of the Chinchilla law: LSE(log A - alpha_N log N, log B - alpha_D log D, log E)."""
    return _lse(log_A - alpha_N * log_N, log_B - alpha_D * log_D, log_E)


def repeated_data(D, epochs, R_star):
    """Muennighoff et al. (2023): the worth of D unique tokens seen ``epochs`` times.

    D' = D (1 + R* (1 - exp(-R / R*))), R = epochs - 1 repetitions: each
    repeat is worth less, and D' saturates at D (1 + R*).
    """
    R = epochs - 1.0
    return D * (1.0 - R_star * expm1(-R / R_star))


def compute_optimal_params(D, A, B, alpha_N, alpha_D):
    """The model size for which D tokens are compute-optimal under the Chinchilla law.

    Minimising A N^-alpha_N + B D^-alpha_D at fixed N D gives
    alpha_N A N^-alpha_N = alpha_D B D^-alpha_D, so
    N_opt = (alpha_N A / (alpha_D B))^(1/alpha_N) D^(alpha_D/alpha_N).
    """
    return (alpha_N * A / (alpha_D * B)) ** (1.0 / alpha_N) * D ** (alpha_D / alpha_N)


def useful_params(N, D, p):
    """Muennighoff et al. (2023): the worth N' of N parameters trained on D unique tokens.

    Parameters beyond U_N = min(N, N_opt(D)) are worth less, like repeated
    epochs: N' = U_N (1 + R_N* (1 - exp(-R_N / R_N*))), R_N = N / U_N - 1.
    N' = N for a model no larger than compute-optimal for its unique data.
    """
    n_opt = compute_optimal_params(D, p["A"], p["B"], p["alpha_N"], p["alpha_D"])
    U_N = where(N < n_opt, N, n_opt)
    return repeated_data(U_N, N / U_N, p["R_N_star"])


def log_useful_params_centred(x_N, x_D, s):
    """log(N'/N0) of ``useful_params`` from centred inputs (x_D: unique data) and the centred sites."""
    x_opt = (jnp.log(s["alpha_N"] * s["A_term"]) - jnp.log(s["alpha_D"] * s["B_term"]) + s["alpha_D"] * x_D) \
        / s["alpha_N"]
    x_U = jnp.minimum(x_N, x_opt)
    return x_U + jnp.log(repeated_data(1.0, jnp.exp(x_N - x_U), s["R_N_star"]))


# ------------------------------------------------------------------ the scratch-law registry


@dataclass(frozen=True)
class ScratchLaw:
    """A from-scratch law L(N, D). Parameters are per target."""

    name: str
    params: tuple[str, ...]
    formula: str
    reference: str
    sites: tuple[Site, ...]
    loss: Callable  # (N, D, p, **inputs) -> L; p maps params to arrays
    floor: Callable  # (N, p) -> L(N, D -> inf)
    invert: Callable  # (N, L, p) -> D with loss(N, D) = L; +inf at or below the floor
    log_loss_centred: Callable  # (x_N, x_D, s, inputs) -> log L; s: site values per run
    natural: Callable  # (s, centre) -> params per target
    inputs: Callable = field(default=lambda runs: {})  # extra per-run inputs from the run table
    kind: str = "scratch"
    needs: str = "from-scratch runs at two or more sizes and data amounts"

    @property
    def level(self) -> dict:
        return {name: "target" for name in self.params}

    finetuned = False  # fitted on from-scratch runs only
    pretrain_axis = False  # no pre-training-size dependence
    has_scratch = True

    def data_to_converge(self, N, p, near: float = 0.01):
        """D(N): the data within ``near`` (1%) of the infinite-data loss."""
        return self.invert(N, (1 + near) * self.floor(N, p), p)


def _positive_gap(gap, value):
    """value where gap > 0, else +inf (no finite data reaches the loss)."""
    safe = where(gap > 0, gap, 1.0)
    return where(gap > 0, value(safe), np.inf)


def _kaplan_invert(N, L, p):
    gap = L ** (1.0 / p["alpha_D"]) - (p["N_c"] / N) ** (p["alpha_N"] / p["alpha_D"])
    return _positive_gap(gap, lambda g: p["D_c"] / g)


def _chinchilla_invert(N, L, p):
    gap = L - p["E"] - p["A"] * N ** -p["alpha_N"]
    return _positive_gap(gap, lambda g: (p["B"] / g) ** (1.0 / p["alpha_D"]))


def _chinchilla_natural(s, c):
    return {"E": s["E"], "A": s["A_term"] * jnp.exp(s["alpha_N"] * c.log_N0),
            "B": s["B_term"] * jnp.exp(s["alpha_D"] * c.log_D0), "alpha_N": s["alpha_N"], "alpha_D": s["alpha_D"]}


def _chinchilla_log(x_N, x_D, s, inputs):
    return _lse(jnp.log(s["A_term"]) - s["alpha_N"] * x_N, jnp.log(s["B_term"]) - s["alpha_D"] * x_D, jnp.log(s["E"]))


def _epochs(runs):
    if "tokens_seen" not in runs:
        raise ValueError("the data-constrained law needs each run's tokens_seen (repeats counted); the grid has none")
    return {"epochs": np.maximum(runs["tokens_seen"].to_numpy(float) / runs["data_tokens"].to_numpy(float), 1.0)}


def _exponent(name, meaning):
    return Site(name, EXPONENT, lambda: dist.Gamma(2.0, 5.0), meaning=meaning)


_CHINCHILLA_SITES = (
    Site("E", lambda: dist.LogNormal(float(np.log(0.5)), 1.0), lambda: dist.Gamma(2.0, 4.0),
         meaning="irreducible loss (nats/token)"),
    Site("A_term", TERM, lambda: dist.Gamma(2.0, 2.0), meaning="A N^-alpha_N at the grid centre (nats/token)"),
    Site("B_term", TERM, lambda: dist.Gamma(2.0, 2.0), meaning="B D^-alpha_D at the grid centre (nats/token)"),
    _exponent("alpha_N", "model-size exponent"),
    _exponent("alpha_D", "data exponent"),
)

KAPLAN = ScratchLaw(
    name="kaplan",
    params=("N_c", "D_c", "alpha_N", "alpha_D"),
    formula="L = [(N_c/N)^(alpha_N/alpha_D) + D_c/D]^alpha_D",
    reference="Kaplan et al. 2020",
    sites=(
        # nats per byte at the grid centre: 0.35 to 6.5 within 2 sd; ln(256) = 5.5 is a uniform guess
        Site("L0", lambda: dist.LogNormal(float(np.log(1.5)), 0.75), lambda: dist.Gamma(2.0, 4.0),
             meaning="loss at the grid centre (nats/token)"),
        Site("w", lambda: dist.Beta(1.5, 1.5), lambda: dist.Gamma(2.0, 2.0), scale="logit",
             meaning="share of the model-size term in the bracket at the grid centre"),
        _exponent("alpha_N", "model-size exponent"),
        _exponent("alpha_D", "data exponent"),
    ),
    loss=lambda N, D, p, **_: kaplan(N, D, p["N_c"], p["D_c"], p["alpha_N"], p["alpha_D"]),
    floor=lambda N, p: (p["N_c"] / N) ** p["alpha_N"],
    invert=_kaplan_invert,
    log_loss_centred=lambda x_N, x_D, s, inputs: log_kaplan_centred(
        x_N, x_D, jnp.log(s["L0"]), s["w"], s["alpha_N"], s["alpha_D"]),
    natural=lambda s, c: dict(zip(("N_c", "D_c"), kaplan_from_centred(
        c.log_N0, c.log_D0, jnp.log(s["L0"]), s["w"], s["alpha_N"], s["alpha_D"])),
        alpha_N=s["alpha_N"], alpha_D=s["alpha_D"]),
)

CHINCHILLA = ScratchLaw(
    name="chinchilla",
    params=("E", "A", "B", "alpha_N", "alpha_D"),
    formula="L = E + A N^-alpha_N + B D^-alpha_D",
    reference="Hoffmann et al. 2022",
    sites=_CHINCHILLA_SITES,
    loss=lambda N, D, p, **_: chinchilla(N, D, p["E"], p["A"], p["B"], p["alpha_N"], p["alpha_D"]),
    floor=lambda N, p: p["E"] + p["A"] * N ** -p["alpha_N"],
    invert=_chinchilla_invert,
    log_loss_centred=_chinchilla_log,
    natural=_chinchilla_natural,
)

def _data_constrained_loss(N, D, p, epochs=1.0, **_):
    return chinchilla(useful_params(N, D, p), repeated_data(D, epochs, p["R_D_star"]), p["E"], p["A"], p["B"],
                      p["alpha_N"], p["alpha_D"])


def _data_constrained_invert(N, L, p):
    """Single-epoch data D with loss(N, D) = L, by bisection on log D.

    N' grows with D (a larger D makes more of N compute-optimal), so the loss
    falls monotonically in D but has no closed-form inverse; 200 halvings of
    [1, 1e40] give D to machine precision. +inf at or below the floor.
    """
    floor = CHINCHILLA.floor(N, p)
    lo, hi = 0.0 * (L + N + p["E"]), 0.0 * (L + N + p["E"]) + np.log(1e40)
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        above = _data_constrained_loss(N, exp(mid), p) > L  # too little data
        lo, hi = where(above, mid, lo), where(above, hi, mid)
    return where(L > floor, exp(0.5 * (lo + hi)), np.inf)


DATA_CONSTRAINED = ScratchLaw(
    name="data_constrained",
    params=("E", "A", "B", "alpha_N", "alpha_D", "R_D_star", "R_N_star"),
    formula="L = E + A N'^-alpha_N + B D'^-alpha_D, D' = D (1 + R_D* (1 - exp(-(epochs - 1) / R_D*))), "
            "N' = U_N (1 + R_N* (1 - exp(-(N/U_N - 1) / R_N*))), U_N = min(N, N_opt(D))",
    reference="Muennighoff et al. 2023",
    sites=_CHINCHILLA_SITES + (
        # repeats worth half a fresh epoch after ~R/0.7 of them: 1 to 100 within 90%
        Site("R_D_star", lambda: dist.LogNormal(float(np.log(10.0)), 1.4), lambda: dist.Gamma(2.0, 2.0),
             meaning="repetitions at which a repeated epoch's worth has decayed by 1/e"),
        Site("R_N_star", lambda: dist.LogNormal(float(np.log(10.0)), 1.4), lambda: dist.Gamma(2.0, 2.0),
             meaning="excess size (in multiples of the compute-optimal size) at which added parameters' worth "
                     "has decayed by 1/e"),),
    # D is unique data. At one epoch, for N at most compute-optimal for D, this is the Chinchilla law.
    loss=_data_constrained_loss,
    floor=CHINCHILLA.floor,  # D -> inf: every parameter is useful
    invert=_data_constrained_invert,  # effective data D' (single-epoch equivalent)
    log_loss_centred=lambda x_N, x_D, s, inputs: _chinchilla_log(
        log_useful_params_centred(x_N, x_D, s), x_D + jnp.log(repeated_data(1.0, inputs["epochs"], s["R_D_star"])),
        s, inputs),
    natural=lambda s, c: {**_chinchilla_natural(s, c), "R_D_star": s["R_D_star"], "R_N_star": s["R_N_star"]},
    inputs=_epochs,
    needs="from-scratch runs at two or more sizes and data amounts, with tokens_seen (epochs)",
)

SCRATCH_LAWS = {law.name: law for law in (KAPLAN, CHINCHILLA, DATA_CONSTRAINED)}


# ------------------------------------------------------------------ transfer (Hernandez et al. 2021)


def transferred_data(D_F, N, k, alpha, beta):
    """Hernandez et al. (2021) Eq. 1.1: D_T = k D_F^alpha N^beta."""
    return k * D_F ** alpha * N ** beta


def log_effective_finetune_data(log_D_F, log_D_T, omega=0.0):
    """log D_E for a fine-tuned run: D_E = D_F (1 - omega) + D_T.

    omega = 0 is the paper's law (D_E = D_F + D_T, so D_T > 0 always);
    omega in (0, 1) is this package's ossification extension: the
    pre-trained model makes a fraction omega of the fine-tuning data
    useless, so D_E - D_F = D_T - omega D_F < 0 once omega D_F exceeds D_T.
    """
    return _lse(log_D_F + jnp.log1p(-omega), log_D_T)


@dataclass(frozen=True)
class Law:
    """A law with pair-level parameters: transfer (on a scratch law) or the transfer gap."""

    name: str
    kind: str
    params: tuple[str, ...]
    level: dict  # param -> "target" or "pair"
    formula: str
    reference: str
    sites: tuple[Site, ...]
    natural: Callable  # (s, centre) -> params
    needs: str
    site_level: dict = field(default_factory=dict)  # site -> "target" (default "pair")

    finetuned = True  # fitted on fine-tuned runs, parameters per source->target pair

    @property
    def pretrain_axis(self) -> bool:
        """Whether the law is a function of the pre-training amount p (at one model size)."""
        return self.kind == "gap"

    @property
    def has_scratch(self) -> bool:
        """Whether the law also describes training from scratch (and so whether pre-training helped)."""
        return self.kind != "finetune"


def _transfer_natural(s, c):
    # D_T at the centre is ratio * D0 = k D0^alpha N0^beta
    log_k = jnp.log(s["transfer_ratio"]) + (1 - s["alpha"]) * c.log_D0 - s["beta"] * c.log_N0
    return {"k": jnp.exp(log_k), "alpha": s["alpha"], "beta": s["beta"]}  # omega is sampled as itself


def transfer_log_effective_data(x_N, x_D, s):
    """log(D_E / D0) of fine-tuned runs from centred inputs and per-run site values."""
    log_DT = jnp.log(s["transfer_ratio"]) + s["alpha"] * x_D + s["beta"] * x_N  # log(D_T / D0)
    return log_effective_finetune_data(x_D, log_DT, s["omega"])


def transferred(N, D_F, p):
    """D_T = k D_F^alpha N^beta - omega D_F (negative: pre-training hurt)."""
    return transferred_data(D_F, N, p["k"], p["alpha"], p["beta"]) - p.get("omega", 0.0) * D_F


TRANSFER = Law(
    name="transfer",
    kind="transfer",
    params=("k", "alpha", "beta", "omega"),
    level={"k": "pair", "alpha": "pair", "beta": "pair", "omega": "pair"},
    formula="L = L_scratch(N, D_F + D_T), D_T = k D_F^alpha N^beta - omega D_F",
    reference="Hernandez et al. 2021, Eq. 1.1 and 6.1 (omega: this package)",
    sites=(
        # k D_F^alpha N^beta / D_F at the grid centre (multiplier - 1 + omega): 0.04 to 27 within 90%
        # With two sources a learnt spread diverged in every fit of the CPU grids (5-21
        # divergences, dense mass or not); fixed, they converge. Fixed wide: a factor e (1 sd)
        # between two sources' ratios, and each source's alpha its own within a factor 1.6.
        Site("transfer_ratio", lambda: dist.LogNormal(0.0, 2.0), lambda: dist.Gamma(2.0, 2.0),
             meaning="k D_F^alpha N^beta / D_F at the grid centre (the multiplier minus 1, plus omega)", few=1.0),
        Site("alpha", EXPONENT, lambda: dist.Gamma(2.0, 4.0), noncentred=True, meaning="fine-tuning-data exponent",
             few=0.5),
        # nearly shared by default, however many pairs: whether it is shared is a model
        # comparison (compare.py), not a spread learnt from a few sources
        Site("beta", EXPONENT, lambda: 0.05, noncentred=True, meaning="model-size exponent of D_T"),
        # ossification: most mass near 0 (the paper's law), 10% above 0.12
        Site("omega", lambda: dist.Beta(1.0, 18.0), lambda: None, scale="free",
             meaning="share of fine-tuning data made useless by pre-training"),
    ),
    natural=_transfer_natural,
    needs="from-scratch and fine-tuned runs of each target, fine-tuned at two or more sizes and D_F",
)


# ------------------------------------------------------------------ transfer gap (Barnett 2024)


def transfer_gap(p, f, A_p, alpha_p, G, alpha_f, E):
    """Barnett (2024), as read here: L(p, f) = (A_p p^-alpha_p + G) f^-alpha_f + E, p > 0."""
    return (A_p * p ** -alpha_p + G) * f ** -alpha_f + E


def log_transfer_gap(log_p, log_f, log_A_p, alpha_p, log_G, alpha_f, log_E):
    """log L of the transfer-gap law: LSE(LSE(log A_p - alpha_p log p, log G) - alpha_f log f, log E)."""
    return _lse(_lse(log_A_p - alpha_p * log_p, log_G) - alpha_f * log_f, log_E)


def gap_scratch(f, C_0, alpha_f, E):
    """From-scratch runs (p = 0) in the transfer-gap model: L = C_0 f^-alpha_f + E."""
    return C_0 * f ** -alpha_f + E


def log_gap_scratch(log_f, log_C_0, alpha_f, log_E):
    """log L of ``gap_scratch``."""
    return _lse(log_C_0 - alpha_f * log_f, log_E)


def gap_loss(p, f, q):
    """The transfer-gap loss for p >= 0 (p = 0: the scratch branch with C_0)."""
    safe = where(p > 0, p, 1.0)
    pre = transfer_gap(safe, f, q["A_p"], q["alpha_p"], q["G"], q["alpha_f"], q["E"])
    return where(p > 0, pre, gap_scratch(f, q["C_0"], q["alpha_f"], q["E"]))


def _gap_natural(s, c):
    af_pair = s["alpha_f"][c.pair_target]
    return {"A_p": s["A_p_term"] * jnp.exp(s["alpha_p"] * c.log_p0 + af_pair * c.log_D0), "alpha_p": s["alpha_p"],
            "G": s["G_term"] * jnp.exp(af_pair * c.log_D0), "alpha_f": s["alpha_f"], "E": s["E"],
            "C_0": s["C_0_term"] * jnp.exp(s["alpha_f"] * c.log_D0)}


TRANSFER_GAP = Law(
    name="transfer_gap",
    kind="gap",
    params=("A_p", "alpha_p", "G", "alpha_f", "E", "C_0"),
    level={"A_p": "pair", "alpha_p": "pair", "G": "pair", "alpha_f": "target", "E": "target", "C_0": "target"},
    formula="L = (A_p p^-alpha_p + G) f^-alpha_f + E (p > 0); L = C_0 f^-alpha_f + E (p = 0)",
    reference="Barnett 2024, as read here",
    sites=(
        _exponent("alpha_f", "fine-tuning-data exponent"),
        Site("E", lambda: dist.LogNormal(float(np.log(0.5)), 1.0), lambda: dist.Gamma(2.0, 4.0),
             meaning="irreducible loss (nats/token)"),
        Site("C_0_term", TERM, lambda: dist.Gamma(2.0, 2.0), meaning="C_0 f^-alpha_f at the grid centre (nats/token)"),
        # per pair, spreads fixed with 2-4 pairs as the transfer law's are: learnt from three
        # targets, G_term's spread falls into its funnel (divergences on the CPU gap grid: docs/priors.md)
        Site("alpha_p", EXPONENT, lambda: dist.Gamma(2.0, 4.0), meaning="pre-training-data exponent", few=0.5),
        Site("A_p_term", TERM, lambda: dist.Gamma(2.0, 2.0),
             meaning="A_p p^-alpha_p f^-alpha_f at the grid centre (nats/token)", few=1.0),
        Site("G_term", TERM, lambda: dist.Gamma(2.0, 2.0), meaning="G f^-alpha_f at the grid centre (nats/token)",
             few=1.0),
    ),
    natural=_gap_natural,
    needs="pre-trained runs at one model size with two or more pre-training amounts, and scratch runs",
    site_level={"alpha_f": "target", "E": "target", "C_0_term": "target"},
)



# ------------------------------------------------------------------ fine-tuning curves (Lin et al. 2024)


def rectified(D, B, D_l, beta, E):
    """Lin et al. (2024), the rectified fine-tuning law: L(D) = B / (D_l + D^beta) + E.

    One curve per pre-trained model and dataset. D_l, the "pre-learned data
    size", is in units of D^beta: a model whose pre-training already covers
    the task behaves as if it had seen D_l^(1/beta) examples before the first.
    """
    return B / (D_l + D ** beta) + E


def log_rectified_centred(x_D, s):
    """log L about a centre D0 (x_D = log D/D0), as the model samples it:
    L = L0 (1 - w + w (r + 1) / (r + exp(beta x_D))), L0 = the loss at D0, w = the reducible share of it
    there, r = D_l / D0^beta.

    The data pin L0 directly; sampling the floor E and the reducible loss T
    (E + T = L0) instead leaves a ridge along E + T = const (posterior
    correlation -0.92 on Lin et al.'s curves) that NUTS crosses slowly.
    """
    log_r = jnp.log(s["r"])
    reducible = jnp.log(s["w"]) + jnp.logaddexp(log_r, 0.0) - jnp.logaddexp(log_r, s["beta"] * x_D)
    return jnp.log(s["L0"]) + _lse(jnp.log1p(-s["w"]), reducible)


def _rectified_natural(s, c):
    log_Dl = jnp.log(s["r"]) + s["beta"] * c.log_D0
    T = s["L0"] * s["w"]  # B / (D_l + D0^beta): the reducible loss at the centre
    return {"B": T * (jnp.exp(log_Dl) + jnp.exp(s["beta"] * c.log_D0)), "D_l": jnp.exp(log_Dl),
            "E": s["L0"] * (1.0 - s["w"])}


RECTIFIED = Law(
    name="rectified",
    kind="finetune",
    params=("B", "D_l", "beta", "E"),
    level={"B": "pair", "D_l": "pair", "beta": "pair", "E": "pair"},
    formula="L = B / (D_l + D_F^beta) + E (per pre-trained model and dataset)",
    reference="Lin et al. 2024, the rectified scaling law",
    # Unpooled, as the paper fits each model on its own: curves of unrelated models (other
    # tokenizers, other pre-training) need not share a population, and with a few pairs a
    # learnt spread is a funnel the sampler cannot cross.
    sites=(
        Site("L0", lambda: dist.LogNormal(float(np.log(1.5)), 1.0), lambda: None, scale="free",
             meaning="loss at the grid centre (nats/token)"),
        Site("w", lambda: dist.Beta(1.5, 1.5), lambda: None, scale="free",
             meaning="reducible share of the loss at the grid centre: B / (D_l + D0^beta) over L0"),
        Site("beta", EXPONENT, lambda: None, scale="free", meaning="fine-tuning-data exponent"),
        # D_l against D0^beta: the pre-learned part of the data term at the centre; 0.02 to 60 within 90%
        Site("r", lambda: dist.LogNormal(0.0, 2.5), lambda: None, scale="free",
             meaning="D_l / D0^beta: pre-learned data against the grid centre's data term"),
    ),
    natural=_rectified_natural,
    needs="fine-tuned runs at three or more D_F per pre-trained model and dataset",
)

LAWS = {**SCRATCH_LAWS, "transfer": TRANSFER, "transfer_gap": TRANSFER_GAP, "rectified": RECTIFIED}


def get(name: str):
    """The law named ``name``; an unknown name is an error listing the known ones."""
    try:
        return LAWS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown law {name!r}; expected one of {tuple(LAWS)}") from None


def of(fit):
    """The law a fit holds."""
    return get(fit.law)


def scratch(name: str) -> ScratchLaw:
    """The scratch law named ``name``."""
    if name not in SCRATCH_LAWS:
        raise ValueError(f"unknown scratch law {name!r}; expected one of {tuple(SCRATCH_LAWS)}")
    return SCRATCH_LAWS[name]


def sites_of(law: str, scratch_law: str | None = "kaplan") -> list[Site]:
    """The sites a law's model draws: a transfer law's scratch form first, then its own."""
    spec = get(law)
    if spec.kind == "transfer":
        return [*scratch(scratch_law).sites, *spec.sites]
    return list(spec.sites)


def site_level(law: str, scratch_law: str | None, name: str) -> str:
    """The level ("target", "pair" or "pretrain_run") a per-group site or parameter varies over."""
    base = name.removesuffix("_decentered").removesuffix("_u")
    if base == "pretrain_z":
        return "pretrain_run"
    spec = get(law)
    level = dict(spec.level)
    if spec.kind == "transfer":
        level.update(scratch(scratch_law).level)
        level.update({s.name: "target" for s in scratch(scratch_law).sites})
    if spec.kind == "scratch":
        level.update({s.name: "target" for s in spec.sites})
    for site in spec.sites:
        level.setdefault(site.name, getattr(spec, "site_level", {}).get(site.name, "pair"))
    return level.get(base, "target")


def effective_data(law_name, N, L, **params):
    """D_E: the data a from-scratch model of size N needs to reach loss L.

    Inversion of the scratch law ``law_name`` (parameters by keyword): in
    closed form, by bisection for data_constrained. Where L is at or below the model's infinite-data floor no
    finite D reaches it and the result is +inf, never NaN.
    """
    law = scratch(law_name)
    missing = [n for n in law.params if n not in params]
    extra = [n for n in params if n not in law.params]
    if missing or extra:
        raise ValueError(f"{law_name} law needs parameters {law.params}; missing {missing}, unexpected {extra}")
    return law.invert(jnp.asarray(N), jnp.asarray(L), params)
