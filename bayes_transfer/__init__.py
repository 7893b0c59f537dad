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

__all__ = ["Grid", "GridError", "load_grid", "__version__"]
