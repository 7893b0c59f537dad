"""bayes-transfer: hierarchical Bayesian fits of scaling laws for transfer."""

import os

import numpyro

# NUTS on these laws is markedly more robust in float64 (log-sum-exp of
# terms spanning many orders of magnitude); set before any array exists.
numpyro.enable_x64()
# One XLA host device per chain (4 by default, more with more cores), so `fit`
# runs its chains in parallel: on 2 cores 1.8x faster than vectorised chains.
# A caller's own setting wins; it takes effect only before JAX starts.
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    numpyro.set_host_device_count(max(4, os.cpu_count() or 1))

from bayes_transfer.version import __version__  # noqa: E402

from bayes_transfer.grid import Grid, GridError, load_grid  # noqa: E402
from bayes_transfer.diagnostics import Diagnostics, NotConvergedError  # noqa: E402
from bayes_transfer.fit import Fit, NotIdentifiedError, fit, load_fit  # noqa: E402
from bayes_transfer.two_stage import TwoStage, two_stage  # noqa: E402

__all__ = [
    "Diagnostics",
    "Fit",
    "Grid",
    "GridError",
    "NotConvergedError",
    "NotIdentifiedError",
    "TwoStage",
    "__version__",
    "fit",
    "load_fit",
    "load_grid",
    "two_stage",
]

# Answers for users: posterior quantities, recommendations, reports.
from bayes_transfer.allocate import Recommendation, recommend  # noqa: E402
from bayes_transfer.quantities import (  # noqa: E402
    band,
    effective_multiplier,
    gap_multiplier,
    low_data_boundary,
    ossification_probability,
    predicted_loss,
    transferred_data,
)
from bayes_transfer.report import report  # noqa: E402

__all__ += ["Recommendation", "recommend", "band", "effective_multiplier", "gap_multiplier", "low_data_boundary",
            "ossification_probability", "predicted_loss", "transferred_data", "report"]

# Which runs next: experimental design on a fit's draws.
from bayes_transfer.design import next_runs, prior_fit  # noqa: E402

__all__ += ["next_runs", "prior_fit"]
