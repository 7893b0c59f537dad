"""Default priors of a model, overridable by name (the laws define their own: ``laws.py``).

Every prior is on a quantity the sampler draws (a law's ``sites``), chosen
to be scale-free where that is possible: the loss or a loss term at the grid
centre, a share, an exponent, D_T / D_F at the grid centre. None is centred
on a published value (see docs/priors.md for each and its reasoning). The
prior text a fit stores is ``describe`` of exactly these distributions.

With several groups (targets or pairs) a site varies by group around a
population value with spread ``tau_<site>`` on its log (or logit) scale.
The spreads have zero-avoiding Gamma(2, rate) priors: with only a few
groups this keeps NUTS out of the funnel where tau -> 0. A site whose Site
names a ``few`` spread has that spread, fixed, when it varies over 2 to 4
groups (``laws.FEW_GROUPS``): too few to learn it. Any ``tau_<site>``
may be given as a number (fixed; 0 makes the groups share one value) or a
distribution. ``nu`` (Student-t degrees of freedom) likewise.
"""

from __future__ import annotations

import numpyro.distributions as dist

from bayes_transfer import laws


def noise_priors() -> dict:
    return {
        # Student-t scale of log-loss per run kind; seed-to-seed spread is ~1% at these sizes
        "sigma": dist.HalfNormal(0.1),
        # fixed: with tens of runs nu is barely identified, and 4 keeps a
        # finite variance while one bad run costs only a log, not a square
        "nu": 4.0,
    }


def pretrain_priors() -> dict:
    # one shared effect on log-loss per pre-training run (all its fine-tuned
    # runs move together); seed-to-seed spread of a pre-training run's
    # fine-tuned losses is a few percent. Informed, since grids usually hold
    # one pre-training run per (source, size): the spread is then not learnt.
    return {"sigma_pretrain": dist.HalfNormal(0.03)}


def _sites(law) -> dict:
    out = {}
    for site in law.sites:
        out[site.name] = site.prior()
        tau = site.tau()
        if tau is not None:
            out[f"tau_{site.name}"] = tau
    return out


def default_priors(law: str, scratch_law: str = "kaplan") -> dict:
    """The default priors of a model, by site name."""
    spec = laws.get(law)
    if spec.kind == "scratch":
        return {**_sites(spec), **noise_priors()}
    if spec.kind == "transfer":
        return {**_sites(laws.scratch(scratch_law)), **_sites(spec), **noise_priors(), **pretrain_priors()}
    if spec.kind == "finetune":  # each pre-trained model is its own pair: its E and T hold its pre-training
        return {**_sites(spec), **noise_priors()}
    return {**_sites(spec), **noise_priors(), **pretrain_priors()}


def resolve_priors(law: str, scratch_law: str = "kaplan", overrides: dict | None = None,
                   groups: dict | None = None) -> dict:
    """Defaults, with the few-group spreads for ``groups`` (the number of groups per
    level, e.g. {"target": 1, "pair": 2}), and ``overrides`` applied over both; an
    unknown name is an error listing the known ones."""
    priors = default_priors(law, scratch_law)
    for site in laws.sites_of(law, scratch_law):
        n = (groups or {}).get(laws.site_level(law, scratch_law, site.name), 1)
        if site.few is not None and f"tau_{site.name}" in priors and 2 <= n < laws.FEW_GROUPS:
            priors[f"tau_{site.name}"] = site.few
    for name, value in (overrides or {}).items():
        if name not in priors:
            raise ValueError(f"unknown prior {name!r} for law {law!r}; known: {', '.join(sorted(priors))}")
        if name == "nu" or name.startswith("tau_"):
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            least = 0 if name.startswith("tau_") else 1e-9
            if not (isinstance(value, dist.Distribution) or (number and value >= least)):
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
