"""Default priors, all in one place, overridable by name.

Every prior is a NumPyro distribution on a natural-scale parameter. They are
weakly informative: centred on the published values (REFERENCE.md) where
those exist, on the log scale, and wide enough that a grid decides.

Two conventions keep NUTS well conditioned and are worth knowing when
overriding:

- Scale parameters (``k``, ``A``, ``B``, ``A_p``, ``G``, ``C_0``) are
  sampled as their term's value at the grid centre (geometric mean of N, D,
  p over the runs), not as the raw coefficient, which is strongly
  correlated with the exponents. Their prior is applied there: e.g. the
  prior on ``k`` becomes a prior on log(k D_F0^alpha N0^beta) with alpha,
  beta at their prior means. With exponents at those means it is exactly the
  prior on k.
- Kaplan's ``N_c`` and ``D_c`` (published for BPE tokens on WebText2, far
  from a byte-level grid) get their prior through ``L0``, the loss at the
  grid centre, and ``w``, the share of the N term in the bracket there.

With several targets (or pairs) each parameter varies by group around a
population value with scale ``tau_<name>`` (on the log, or logit for
(0, 1) parameters, scale). The scales have zero-avoiding Gamma(2, rate)
priors (mean 2/rate): groups are expected to differ, and with only a few
groups this keeps NUTS out of the funnel where tau -> 0. ``tau_beta`` is
the exception: beta is expected shared, so its scale is a fixed small number.
Any ``tau_<name>`` may be given as a number (fixed) or a distribution. ``nu`` (Student-t degrees of freedom) may be a
number (fixed) or a distribution.
"""

from __future__ import annotations

import math

import numpyro.distributions as dist

from bayes_transfer.published import SCRATCH, TRANSFER

# Priors centre on the published values. Chinchilla's E is in nats per BPE
# token: at ~4 bytes per token it is ~0.4 nats per byte.
PUBLISHED = {
    "kaplan": SCRATCH["kaplan"]["values"],
    "chinchilla": {**SCRATCH["chinchilla"]["values"], "E": SCRATCH["chinchilla"]["values"]["E"] / 4},
    "transfer": TRANSFER["text"]["values"],
}


def _lognormal(median: float, sd_log: float) -> dist.Distribution:
    return dist.LogNormal(math.log(median), sd_log)


def _scratch(law: str) -> dict:
    if law == "kaplan":
        pub = PUBLISHED["kaplan"]
        return {
            "alpha_N": _lognormal(pub["alpha_N"], 0.75),
            "alpha_D": _lognormal(pub["alpha_D"], 0.75),
            # nats per byte at the grid centre: 0.35 to 6.5 within 2 sd, ln(256) = 5.5 is a uniform guess
            "L0": _lognormal(1.5, 0.75),
            "w": dist.Beta(1.5, 1.5),
            "tau_alpha_N": dist.Gamma(2.0, 5.0),
            "tau_alpha_D": dist.Gamma(2.0, 5.0),
            "tau_L0": dist.Gamma(2.0, 4.0),
            "tau_w": dist.Gamma(2.0, 2.0),
        }
    if law == "chinchilla":
        pub = PUBLISHED["chinchilla"]
        return {
            "E": _lognormal(pub["E"], 1.0),
            "A": _lognormal(pub["A"], 2.5),
            "B": _lognormal(pub["B"], 2.5),
            "alpha_N": _lognormal(pub["alpha_N"], 0.75),
            "alpha_D": _lognormal(pub["alpha_D"], 0.75),
            "tau_E": dist.Gamma(2.0, 4.0),
            "tau_A": dist.Gamma(2.0, 2.0),
            "tau_B": dist.Gamma(2.0, 2.0),
            "tau_alpha_N": dist.Gamma(2.0, 5.0),
            "tau_alpha_D": dist.Gamma(2.0, 5.0),
        }
    raise ValueError(f"unknown scratch law {law!r}; expected 'kaplan' or 'chinchilla'")


def _transfer() -> dict:
    pub = PUBLISHED["transfer"]
    return {
        "k": _lognormal(pub["k"], 3.0),
        "alpha": _lognormal(pub["alpha"], 0.75),
        "beta": _lognormal(pub["beta"], 0.5),
        # ossification: most mass near 0 (the paper's law), 10% above 0.12
        "omega": dist.Beta(1.0, 18.0),
        "tau_k": dist.Gamma(2.0, 2.0),
        "tau_alpha": dist.Gamma(2.0, 4.0),
        # beta is a property of the model, nearly the same for every pair: its
        # spread is fixed at 5% (log scale). A learnt scale this small puts a
        # funnel in the posterior whichever way it is sampled (divergences).
        "tau_beta": 0.05,
    }


def _transfer_gap() -> dict:
    return {
        "A_p": _lognormal(1e3, 3.0),
        "alpha_p": _lognormal(0.3, 0.75),
        "G": _lognormal(30.0, 3.0),
        "alpha_f": _lognormal(0.3, 0.75),
        "E": _lognormal(0.4, 1.0),
        "C_0": _lognormal(100.0, 3.0),
        "tau_A_p": dist.Gamma(2.0, 2.0),
        "tau_alpha_p": dist.Gamma(2.0, 4.0),
        "tau_G": dist.Gamma(2.0, 2.0),
        "tau_alpha_f": dist.Gamma(2.0, 5.0),
        "tau_E": dist.Gamma(2.0, 4.0),
        "tau_C_0": dist.Gamma(2.0, 2.0),
    }


def _noise() -> dict:
    return {
        # sd of log-loss per run kind; seed-to-seed spread is ~1% at these sizes
        "sigma": dist.HalfNormal(0.1),
        # fixed: with tens of runs nu is barely identified, and 4 keeps a
        # finite variance while one bad run costs only a log, not a square
        "nu": 4.0,
    }


def default_priors(law: str, scratch_law: str = "kaplan") -> dict:
    """The default priors of a model, by parameter name."""
    if law in ("kaplan", "chinchilla"):
        return {**_scratch(law), **_noise()}
    if law == "transfer":
        return {**_scratch(scratch_law), **_transfer(), **_noise()}
    if law == "transfer_gap":
        return {**_transfer_gap(), **_noise()}
    raise ValueError(f"unknown law {law!r}; expected one of 'kaplan', 'chinchilla', 'transfer', 'transfer_gap'")


def resolve_priors(law: str, scratch_law: str = "kaplan", overrides: dict | None = None) -> dict:
    """Defaults with ``overrides`` applied; an unknown name is an error listing the known ones."""
    priors = default_priors(law, scratch_law)
    for name, value in (overrides or {}).items():
        if name not in priors:
            raise ValueError(f"unknown prior {name!r} for law {law!r}; known: {', '.join(sorted(priors))}")
        if name == "nu" or name.startswith("tau_"):
            if not isinstance(value, (int, float, dist.Distribution)) or (isinstance(value, (int, float)) and value <= 0):
                raise ValueError(f"prior {name!r} must be a positive number (fixed) or a distribution, got {value!r}")
        elif not isinstance(value, dist.Distribution):
            raise ValueError(f"prior {name!r} must be a numpyro distribution, got {type(value).__name__}")
        priors[name] = value
    return priors


def describe(prior) -> str:
    """A one-line text form of a prior (for fit files and reports)."""
    if not isinstance(prior, dist.Distribution):
        return repr(prior)
    args = ", ".join(f"{k}={float(getattr(prior, k)):.4g}" for k in prior.arg_constraints if hasattr(prior, k))
    return f"{type(prior).__name__}({args})"
