"""Shared test settings: float64 JAX on the host CPU, fixed seeds."""

import numpyro

numpyro.enable_x64()
numpyro.set_host_device_count(1)
