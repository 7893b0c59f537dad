"""Shared test settings: float64 JAX on the host CPU, fixed seeds."""

import jax
import numpyro

numpyro.enable_x64()
numpyro.set_host_device_count(1)

import bayes_transfer  # noqa: E402,F401  (sets up the compilation cache)

# The package caches every compiled program (a user's refits load them); the suite's
# hundreds of small one-off fits would only pay to write them: keep JAX's 1 s threshold.
jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
