"""bayes-transfer: hierarchical Bayesian fits of scaling laws for transfer."""

from importlib.metadata import PackageNotFoundError, version

import numpyro

# NUTS on these laws is markedly more robust in float64 (log-sum-exp of
# terms spanning many orders of magnitude); set before any array exists.
numpyro.enable_x64()

try:
    __version__ = version("bayes-transfer")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

from bayes_transfer.grid import Grid, GridError, load_grid  # noqa: E402
from bayes_transfer.fit import Diagnostics, Fit, NotIdentifiedError, TwoStage, fit, load_fit, two_stage  # noqa: E402

__all__ = [
    "Diagnostics",
    "Fit",
    "Grid",
    "GridError",
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
    low_data_boundary,
    ossification_probability,
    predicted_loss,
    transferred_data,
)
from bayes_transfer.report import report  # noqa: E402

__all__ += ["Recommendation", "recommend", "band", "effective_multiplier", "low_data_boundary",
            "ossification_probability", "predicted_loss", "transferred_data", "report"]

# Which runs next: experimental design on a fit's draws.
from bayes_transfer.design import next_runs, prior_fit  # noqa: E402

__all__ += ["next_runs", "prior_fit"]
