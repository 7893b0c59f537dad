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


def _compilation_cache() -> None:
    """Keep compiled samplers on disk, per user: a model compiled once (a refit, the next
    notebook session) loads in about a second instead of recompiling (6 s of a 14 s fit of
    the Chinchilla law). What JAX loads from there is machine code, so the folder must be
    this user's own and closed to others' writes, else it is not used.
    ``BAYES_TRANSFER_JAX_CACHE``: ``off``, or a folder; a caller's ``JAX_COMPILATION_CACHE_DIR`` wins."""
    setting = os.environ.get("BAYES_TRANSFER_JAX_CACHE", "")
    if setting.lower() in ("off", "0", "no") or os.environ.get("JAX_COMPILATION_CACHE_DIR") or not hasattr(os, "getuid"):
        return
    import stat
    from pathlib import Path

    import jax

    if setting:
        folder = Path(setting)
    else:
        folder = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "bayes-transfer" / "jax"
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = folder.stat()
    except OSError:
        return  # no writable cache (a read-only home): compile every time
    if info.st_uid != os.getuid() or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return
    jax.config.update("jax_compilation_cache_dir", str(folder))
    # Every program, not only those over JAX's default 1 s of compiling: a fit's many small
    # ones add up (a first fit in a fresh process, cache warm: 15.7 s against 27.6 s).
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    # A size limit turns on JAX's eviction, and with it a file lock: two processes never
    # read an entry while the other is writing it.
    jax.config.update("jax_compilation_cache_max_size", 512 * 2**20)


_compilation_cache()

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
