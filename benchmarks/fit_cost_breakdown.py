"""Benchmark: where the seconds of one ``bayes_transfer.fit`` go.

A full posterior costs compilation (NUTS warm-up and sampling kernels), the
leapfrog steps themselves (steps per draw x the cost of one gradient), and
the work after sampling (posterior predictive, pointwise log-likelihood for
PSIS-LOO, prior draws for the prior-driven labels). This script times each
on one problem, in one process, and prints them beside the cost of one
gradient of the log density in a compiled loop (the floor any sampler pays
per step), so the levers can be read as ratios on any machine:

    python benchmarks/fit_cost_breakdown.py                  # joint transfer model, simulated 192-run grid
    python benchmarks/fit_cost_breakdown.py --problem epoch  # Chinchilla law on Epoch AI's runs
    python benchmarks/fit_cost_breakdown.py --side 6         # the transfer model on 108 runs
    python benchmarks/fit_cost_breakdown.py --mass-matrix diagonal  # NumPyro's own adaptation
    python benchmarks/fit_cost_breakdown.py --chains 2 --draws 400 --warmup 400
"""

from __future__ import annotations

import argparse
import os
import platform
import time
import warnings
from pathlib import Path


def _args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--problem", choices=("transfer", "epoch"), default="transfer")
    p.add_argument("--side", type=int, default=8,
                   help="transfer: model sizes = fine-tuning sizes = SIDE, so 3 x SIDE^2 runs (8: 192)")
    p.add_argument("--chains", type=int, default=4)
    p.add_argument("--draws", type=int, default=1000)
    p.add_argument("--warmup", type=int, default=1000)
    p.add_argument("--mass-matrix", choices=("auto", "pooled", "diagonal", "dense"), default="auto",
                   help="fit()'s mass_matrix (default: fit()'s, auto)")
    return p.parse_args()


ARGS = _args() if __name__ == "__main__" else None

import jax  # noqa: E402  (after argparse so --help is instant)
import numpy as np  # noqa: E402
from jax.flatten_util import ravel_pytree  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpyro  # noqa: E402
import numpyro.distributions as dist  # noqa: E402
from numpyro.infer import MCMC, NUTS, Predictive, log_likelihood  # noqa: E402
from numpyro.infer.util import initialize_model  # noqa: E402

from bayes_transfer import fit  # noqa: E402
from bayes_transfer.fit import MAX_TREE_DEPTH  # noqa: E402
from bayes_transfer.grid import load_grid  # noqa: E402
from bayes_transfer.models import design_grid, model_for, prepare, simulate_grid  # noqa: E402
from bayes_transfer.priors import resolve_priors  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def problem(name: str):
    if name == "epoch":
        return load_grid(ROOT / "data" / "external" / "epoch2024_chinchilla" / "grid.csv"), "chinchilla"
    truth = dict(N_c=1.5e6, D_c=1.5e6, alpha_N=0.15, alpha_D=0.3, k={("text", "python"): 90.0, ("code", "python"): 500.0},
                 alpha={("text", "python"): 0.18, ("code", "python"): 0.1}, beta=0.38, omega=0.0)
    side = ARGS.side
    design = design_grid(np.geomspace(1e5, 3e6, side), np.geomspace(6e4, 3e7, side), sources=("text", "code"),
                         target="python")
    return simulate_grid(design, "transfer", truth, sigma=0.01, seed=0), "transfer"


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    jax.block_until_ready(out)
    return out, time.perf_counter() - t0


def gradient_cost(model, data, priors, n: int = 2000) -> tuple[float, int]:
    """Seconds per value-and-gradient of the potential, in a compiled loop (no dispatch), and
    the number of latent dimensions."""
    info = initialize_model(jax.random.PRNGKey(0), model, model_args=(data, priors), model_kwargs={"y": data.y})
    flat, unravel = ravel_pytree(info.param_info.z)

    def body(_, x):
        return x - 1e-12 * jax.grad(lambda f: info.potential_fn(unravel(f)))(x)

    loop = jax.jit(lambda x: jax.lax.fori_loop(0, n, body, x))
    loop(flat).block_until_ready()
    _, seconds = timed(lambda: loop(flat))
    return seconds / n, flat.size


def sampler_step_cost(dim: int, dense: bool, draws: int = 4000) -> float:
    """Seconds per leapfrog step of NumPyro's NUTS on a standard normal of ``dim`` dimensions,
    one chain, compiled: the sampler's own work per step, with a gradient that costs nothing."""

    def normal():
        numpyro.sample("x", dist.Normal(jnp.zeros(dim), 1.0))

    mcmc = MCMC(NUTS(normal, dense_mass=dense), num_warmup=500, num_samples=draws, progress_bar=False)
    mcmc.warmup(jax.random.PRNGKey(0))
    mcmc.run(mcmc.post_warmup_state.rng_key, extra_fields=("num_steps",))  # compiles the sampling loop
    _, seconds = timed(lambda: mcmc.run(mcmc.post_warmup_state.rng_key, extra_fields=("num_steps",)))
    return seconds / int(mcmc.get_extra_fields()["num_steps"].sum())


def warmup_steps(model, data, priors, sampler: dict, warmup: int) -> float:
    """Leapfrog steps of one chain's warm-up: the pooled mass matrix's pilot as the fit recorded it
    (its step-size phase, a quarter of the iterations at the drawing phase's cost, not counted);
    for NumPyro's adaptation, one chain's warm-up run again with the fit's settings."""
    if sampler["mass_matrix"] == "pooled":
        return sampler["pilot_steps_per_chain"]
    kernel = NUTS(model, target_accept_prob=sampler["target_accept"], dense_mass=sampler["mass_matrix"] == "dense",
                  max_tree_depth=MAX_TREE_DEPTH)
    mcmc = MCMC(kernel, num_warmup=warmup, num_samples=1, progress_bar=False)
    mcmc.warmup(jax.random.PRNGKey(0), data, priors, y=data.y, extra_fields=("num_steps",), collect_warmup=True)
    return int(mcmc.get_extra_fields()["num_steps"].sum())


def main() -> None:
    grid, law = problem(ARGS.problem)
    data = prepare(grid, law)
    priors = resolve_priors(law, groups=data.groups)
    model = model_for(law)
    cache = jax.config.jax_compilation_cache_dir
    entries = len(list(Path(cache).glob("*-cache"))) if cache else 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        f, total = timed(lambda: fit(grid, law, chains=ARGS.chains, draws=ARGS.draws, warmup=ARGS.warmup, seed=0,
                                     progress=False, mass_matrix=ARGS.mass_matrix))
    steps = f.idata.sample_stats["n_steps"].values
    post = f.posterior
    flat = {k: post[k].values.reshape(-1, *post[k].shape[2:]) for k in post.data_vars}
    key = jax.random.PRNGKey(1)
    parts = {
        "posterior predictive": timed(lambda: Predictive(model, posterior_samples=flat, return_sites=["log_loss"])(
            key, data, priors)["log_loss"])[1],
        "pointwise log-likelihood": timed(lambda: log_likelihood(model, flat, data, priors, y=data.y)["log_loss"])[1],
        "1000 prior draws": timed(lambda: Predictive(model, num_samples=1000)(key, data, priors))[1],
    }
    later = {"1000 prior draws"}  # drawn when a prior is first asked for (Fit.prior), not inside fit()
    grad, dim = gradient_cost(model, data, priors)
    step = sampler_step_cost(dim, f.sampler["mass_matrix"] != "diagonal")
    warm = warmup_steps(model, data, priors, f.sampler, ARGS.warmup)
    n_grads = int(steps.sum())  # sampling phase only; `warm` counts one chain's warm-up
    sampler = f.sampler["seconds"]
    after = total - sampler
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs; "
          f"load average {os.getloadavg()[0]:.1f} at the end")
    print(f"problem: {ARGS.problem} ({law}, {len(grid)} runs); {ARGS.chains} chains x {ARGS.draws} draws "
          f"after {ARGS.warmup} warm-up, chain method {f.sampler['chain_method']}, mass matrix "
          f"{f.sampler['mass_matrix']}; {f.diagnostics()}")
    print(f"compilation cache: {cache or 'off'}" + (f", {entries} entries before the fit" if cache else ""))
    print("| part | seconds | share of the fit |\n|---|---|---|")
    print(f"| whole fit | {total:.1f} | 1.00 |")
    print(f"| sampler (compile + warm-up + draws) | {sampler:.1f} | {sampler / total:.2f} |")
    print(f"| after sampling (all of it) | {after:.1f} | {after / total:.2f} |")
    for name, seconds in parts.items():
        what = "not in the fit: on first use of the prior" if name in later else "of which"
        print(f"| ... {what}: {name} (timed alone) | {seconds:.1f} | {seconds / total:.2f} |")
    print(f"leapfrog steps per draw: mean {steps.mean():.1f}, max {steps.max()}; "
          f"{n_grads:,} gradients in the sampling phase")
    print(f"one gradient in a compiled loop: {grad * 1e6:.0f} us; the sampling phase's gradients alone would take "
          f"{n_grads * grad:.1f} s on one core ({n_grads * grad / sampler:.2f} of the sampler's time)")
    print(f"the sampler's own work per leapfrog step ({dim}-dimensional standard normal, same mass matrix, "
          f"one chain): {step * 1e6:.0f} us, {step / grad:.1f}x this model's gradient; with it the sampling "
          f"phase's steps would take {n_grads * (grad + step):.1f} s on one core")
    per_chain = n_grads / ARGS.chains
    print(f"warm-up (one chain, seed 0): {warm:,.0f} leapfrog steps, {warm / per_chain:.1f}x a chain's "
          f"sampling phase; all {ARGS.chains} chains' warm-up and sampling steps would take "
          f"{(ARGS.chains * warm + n_grads) * (grad + step):.1f} s on one core")


if __name__ == "__main__":
    main()
