"""Scaling and transfer laws as pure JAX functions (no sampling here).

Natural-scale forms take and return arrays of sizes and losses; the
``log_*`` forms take log inputs and log parameters and are the ones the
NumPyro models use: they are log-sum-exp expressions, so they stay finite
and well conditioned over the many orders of magnitude of N and D.
All functions broadcast, are differentiable and work under ``jax.vmap``.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax.scipy.special import logsumexp

SCRATCH_LAWS = ("kaplan", "chinchilla")


def kaplan(N, D, N_c, D_c, alpha_N, alpha_D):
    """Kaplan et al. (2020): L = [(N_c/N)^(alpha_N/alpha_D) + D_c/D]^alpha_D."""
    return jnp.exp(log_kaplan(jnp.log(N), jnp.log(D), jnp.log(N_c), jnp.log(D_c), alpha_N, alpha_D))


def log_kaplan(log_N, log_D, log_N_c, log_D_c, alpha_N, alpha_D):
    """log L of the Kaplan law from log inputs: alpha_D * LSE(r (log N_c - log N), log D_c - log D)."""
    r = alpha_N / alpha_D
    terms = jnp.stack(jnp.broadcast_arrays(r * (log_N_c - log_N), log_D_c - log_D))
    return alpha_D * logsumexp(terms, axis=0)


def log_kaplan_centred(x_N, x_D, log_L0, w, alpha_N, alpha_D):
    """The Kaplan law about a centre (N0, D0), as the models sample it.

    x_N = log(N/N0), x_D = log(D/D0); L0 is the loss at the centre and w the
    share of the bracket that the N term holds there. The data pin L0 down
    directly, which removes the alpha_D-versus-scale ridge that makes NUTS
    slow on the raw parameters. ``kaplan_from_centred`` maps back.
    """
    r = alpha_N / alpha_D
    terms = jnp.stack(jnp.broadcast_arrays(jnp.log(w) - r * x_N, jnp.log1p(-w) - x_D))
    return log_L0 + alpha_D * logsumexp(terms, axis=0)


def kaplan_from_centred(log_N0, log_D0, log_L0, w, alpha_N, alpha_D):
    """(N_c, D_c) of the centred Kaplan parameterisation."""
    s = log_L0 / alpha_D
    log_N_c = log_N0 + (s + jnp.log(w)) * alpha_D / alpha_N
    log_D_c = log_D0 + s + jnp.log1p(-w)
    return jnp.exp(log_N_c), jnp.exp(log_D_c)


def chinchilla(N, D, E, A, B, alpha_N, alpha_D):
    """Hoffmann et al. (2022): L = E + A N^-alpha_N + B D^-alpha_D."""
    return E + A * jnp.power(N, -alpha_N) + B * jnp.power(D, -alpha_D)


def log_chinchilla(log_N, log_D, log_E, log_A, log_B, alpha_N, alpha_D):
    """log L of the Chinchilla law: LSE(log A - alpha_N log N, log B - alpha_D log D, log E)."""
    terms = jnp.stack(jnp.broadcast_arrays(log_A - alpha_N * log_N, log_B - alpha_D * log_D, log_E))
    return logsumexp(terms, axis=0)


def effective_data(law_name, N, L, **params):
    """D_E: the data a from-scratch model of size N needs to reach loss L.

    Closed-form inversion of the scratch law ``law_name`` ("kaplan" or
    "chinchilla", parameters by keyword). Where L is at or below the model's
    infinite-data floor (L_scratch(N, D -> inf)) no finite D reaches it and
    the result is +inf, never NaN.
    """
    N = jnp.asarray(N)
    L = jnp.asarray(L)
    if law_name == "kaplan":
        p = _require(params, "kaplan", ("N_c", "D_c", "alpha_N", "alpha_D"))
        gap = jnp.power(L, 1.0 / p["alpha_D"]) - jnp.power(p["N_c"] / N, p["alpha_N"] / p["alpha_D"])
        safe = jnp.where(gap > 0, gap, 1.0)
        return jnp.where(gap > 0, p["D_c"] / safe, jnp.inf)
    if law_name == "chinchilla":
        p = _require(params, "chinchilla", ("E", "A", "B", "alpha_N", "alpha_D"))
        gap = L - p["E"] - p["A"] * jnp.power(N, -p["alpha_N"])
        safe = jnp.where(gap > 0, gap, 1.0)
        return jnp.where(gap > 0, jnp.power(p["B"] / safe, 1.0 / p["alpha_D"]), jnp.inf)
    raise ValueError(f"unknown scratch law {law_name!r}; expected one of {SCRATCH_LAWS}")


def _require(params, law_name, names):
    missing = [n for n in names if n not in params]
    extra = [n for n in params if n not in names]
    if missing or extra:
        raise ValueError(f"{law_name} law needs parameters {names}; missing {missing}, unexpected {extra}")
    return params


def transferred_data(D_F, N, k, alpha, beta):
    """Hernandez et al. (2021) Eq. 1.1: D_T = k D_F^alpha N^beta."""
    return k * jnp.power(D_F, alpha) * jnp.power(N, beta)


def log_transferred_data(log_D_F, log_N, log_k, alpha, beta):
    """log D_T of Eq. 1.1."""
    return log_k + alpha * log_D_F + beta * log_N


def log_effective_finetune_data(log_D_F, log_D_T, omega=0.0):
    """log D_E for a fine-tuned run: D_E = D_F (1 - omega) + D_T.

    omega = 0 is the paper's law (D_E = D_F + D_T, so D_T > 0 always);
    omega in (0, 1) is this package's ossification extension: the
    pre-trained model makes a fraction omega of the fine-tuning data
    useless, so D_E - D_F = D_T - omega D_F < 0 once omega D_F exceeds D_T.
    """
    terms = jnp.stack(jnp.broadcast_arrays(log_D_F + jnp.log1p(-omega), log_D_T))
    return logsumexp(terms, axis=0)


def transfer_gap(p, f, A_p, alpha_p, G, alpha_f, E):
    """Barnett (2024), as read here: L(p, f) = (A_p p^-alpha_p + G) f^-alpha_f + E, p > 0."""
    return (A_p * jnp.power(p, -alpha_p) + G) * jnp.power(f, -alpha_f) + E


def log_transfer_gap(log_p, log_f, log_A_p, alpha_p, log_G, alpha_f, log_E):
    """log L of the transfer-gap law: LSE(LSE(log A_p - alpha_p log p, log G) - alpha_f log f, log E)."""
    inner = logsumexp(jnp.stack(jnp.broadcast_arrays(log_A_p - alpha_p * log_p, log_G)), axis=0)
    return logsumexp(jnp.stack(jnp.broadcast_arrays(inner - alpha_f * log_f, log_E)), axis=0)


def gap_scratch(f, C_0, alpha_f, E):
    """From-scratch runs (p = 0) in the transfer-gap model: L = C_0 f^-alpha_f + E."""
    return C_0 * jnp.power(f, -alpha_f) + E


def log_gap_scratch(log_f, log_C_0, alpha_f, log_E):
    """log L of ``gap_scratch``."""
    return logsumexp(jnp.stack(jnp.broadcast_arrays(log_C_0 - alpha_f * log_f, log_E)), axis=0)


def logit(x):
    """Inverse of ``jax.nn.sigmoid``, used for the (0, 1) parameters."""
    return jnp.log(x) - jnp.log1p(-x)


__all__ = [
    "SCRATCH_LAWS",
    "kaplan",
    "log_kaplan",
    "log_kaplan_centred",
    "kaplan_from_centred",
    "chinchilla",
    "log_chinchilla",
    "effective_data",
    "transferred_data",
    "log_transferred_data",
    "log_effective_finetune_data",
    "transfer_gap",
    "log_transfer_gap",
    "gap_scratch",
    "log_gap_scratch",
    "logit",
]
