"""Print every number the README's "Real results" section quotes, from the shipped grids.

    python scripts/readme_numbers.py                 # all three sections (about 15 minutes on 2 cores)
    python scripts/readme_numbers.py --only main     # or: two_sources, gap

Each fit uses the demo's sampler settings and seed (``bayes-transfer demo``), so
the diagnostics printed are the demo's; the extra fits (Chinchilla form, no
ossification term, priors twice as wide, beta per source) use the same
settings unless a line says otherwise.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import arviz as az
import numpy as np

from bayes_transfer import fit, load_grid, quantities as q, recommend
from bayes_transfer.cli import DEMO_SAMPLER, DEMO_SAMPLER_FOR
from bayes_transfer.compare import beta_sharing_of
from bayes_transfer.fit import default_law
from bayes_transfer.sensitivity import prior_sensitivity

GRIDS = Path(__file__).resolve().parents[1] / "data" / "grids"
KIB, MIB = 1024.0, 1024.0**2


def fmt(x: float) -> str:
    return f"{x:.3g}" if 1e-3 <= abs(x) < 1e4 else f"{x:.2g}"


def interval(draws) -> str:
    v = np.asarray(draws).ravel()
    lo, med, hi = np.quantile(v, [0.05, 0.5, 0.95])
    return f"{fmt(med)} [{fmt(lo)}, {fmt(hi)}]"


def timed_fit(name: str, path: Path, **kwargs):
    settings = dict(DEMO_SAMPLER, **DEMO_SAMPLER_FOR.get(path.stem, {}), seed=0, progress=False,
                    law=default_law(load_grid(path, include_capped=True)))
    settings.update(kwargs)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        f = fit(path, **settings)
    print(f"- {name}: {f.diagnostics()}; {time.perf_counter() - t0:.0f} s "
          f"({f.sampler['chains']} x {f.sampler['draws']}, target_accept {f.sampler['target_accept']})")
    return f


def width(f, quantity, *args, **kwargs) -> str:
    ratio = q.prior_driven(f, quantity, *args, **kwargs)
    value, driven = (float(np.asarray(x).ravel()[0]) for x in (ratio.width_ratio, ratio))
    return f"{value:.2f}" + (" prior-driven" if driven else "")


def multipliers(f, points, pair=None, label=""):
    for N, D_F in points:
        m = q.effective_multiplier(f, N, D_F, pair=pair, allow_unconverged=True)
        print(f"  - {label}multiplier at N {N:.3g}, D_F {D_F / KIB:.0f} KiB: {interval(m)}; "
              f"posterior/prior width {width(f, q.effective_multiplier, N, D_F, pair=pair)}")


def sensitivity(f, **sampler):
    table, wide = prior_sensitivity(f, **sampler)
    longer = f" ({wide.sampler['warmup']} warm-up, {wide.sampler['chains']} x {wide.sampler['draws']})" if sampler else ""
    print(f"  - priors twice as wide (target_accept {wide.sampler['target_accept']:g}{longer}): {wide.diagnostics()}")
    for _, r in table.iterrows():
        print(f"    - {r['quantity']}: {fmt(r['median'])} [{fmt(r['lower'])}, {fmt(r['upper'])}] -> "
              f"{fmt(r['wide median'])} [{fmt(r['wide lower'])}, {fmt(r['wide upper'])}]; shift "
              f"{r['shift / width']:.2f}, width ratio {r['width ratio']:.2f}")
    return wide


def parameters(f, names, label=""):
    s = f.summary()
    for name in names:
        for row in [i for i in s.index if i == name or i.startswith(name + "[")]:
            r = s.loc[row]
            print(f"  - {label}{row}: {fmt(r['median'])} [{fmt(r['5%'])}, {fmt(r['95%'])}]; posterior/prior width "
                  f"{r['width ratio']:.2f}{' prior-driven' if r['prior-driven'] else ''}")


def demo_fit(title: str, path: Path):
    """The demo's fit of a shipped grid, its centre (N, D_F) and its smallest and largest N."""
    print(f"## {title} ({path.name})")
    f = timed_fit("demo fit", path)
    sizes = f.grid.runs["n_params"]
    return (f, *q.fit_centre(f), sizes.min(), sizes.max())


def main_grid():
    path = GRIDS / "cpu_text_to_python.nc"
    f, N0, D0, n_lo, n_hi = demo_fit("Main grid (Kaplan scratch form)", path)
    multipliers(f, [(N0, D0), (n_lo, 8 * KIB), (n_hi, 8 * KIB), (n_lo, 512 * KIB), (n_hi, 512 * KIB),
                    (n_lo, 2 * MIB)])
    multipliers(f, [(1.21e5, 46 * KIB)], label="at the 69-run file's centre: ")
    parameters(f, ["alpha", "beta", "k", "omega", "alpha_N", "alpha_D", "sigma", "sigma_pretrain"])
    for N in (n_lo, n_hi):
        d_f = np.geomspace(8 * KIB, 512 * KIB, 13)
        dt = np.asarray(q.transferred_data(f, N, d_f, allow_unconverged=True).median(("chain", "draw"))).ravel() / KIB
        print(f"  - D_T median at N {N:.3g} over D_F 8-512 KiB: {dt.min():.0f}-{dt.max():.0f} KiB "
              f"({dt[0]:.0f} KiB at 8 KiB, {dt[-1]:.0f} KiB at 512 KiB)")
        p = q.ossification_probability(f, N, 2 * MIB, allow_unconverged=True)
        print(f"  - P(ossified) at N {N:.3g}, 2 MiB: {float(np.asarray(p).ravel()[0]):.2f}")
    multipliers(f, [(49440, d * KIB) for d in (8, 32, 128)], label="at the gap grid's size: ")
    rec = recommend(f, budget=100, cost_finetune=1e-3, price_per_flop=1e-12,
                    current=dict(n_params=3.3e5, data_tokens=131072))
    print("  - recommend (budget 100, cost_finetune 1e-3, price_per_flop 1e-12, N 3.3e5, D_F 128 KiB):\n" +
          rec.to_markdown())
    ppc = q.posterior_predictive_table(f)
    print(f"  - runs inside their 90% predictive interval: {ppc['inside'].mean():.0%} of {len(ppc)}")
    for d in (8 * KIB, 32 * KIB):
        rows = ppc[(ppc["source"] == "none") & (ppc["data_tokens"] == d)]
        off = rows["loss"] - rows["median"]
        print(f"  - scratch runs at {d / KIB:.0f} KiB: losses {rows['loss'].min():.2f}-{rows['loss'].max():.2f}, "
              f"observed - law median {off.min():+.2f} to {off.max():+.2f} ({rows['inside'].sum()} of {len(rows)} "
              "inside their 90% predictive interval)")
    wide = sensitivity(f)
    parameters(wide, ["alpha", "beta", "k"], "wider priors: ")
    chin = timed_fit("Chinchilla scratch form (seed 1: the README says why)", path, scratch_law="chinchilla", seed=1)
    multipliers(chin, [(N0, D0), (n_lo, 8 * KIB), (n_hi, 8 * KIB), (n_lo, 512 * KIB), (n_hi, 512 * KIB)],
                label="Chinchilla: ")
    parameters(chin, ["alpha", "beta", "k"], "Chinchilla: ")
    cmp = az.compare({"kaplan": f.idata, "chinchilla": chin.idata})
    pareto = {name: int((az.loo(x.idata, pointwise=True).pareto_k > 0.7).sum()) for name, x in
              (("kaplan", f), ("chinchilla", chin))}
    print(f"  - LOO: {cmp[['elpd_loo', 'elpd_diff', 'dse']].round(2).to_dict('index')}; Pareto k > 0.7: {pareto}")
    plain = timed_fit("no ossification term (target_accept 0.95)", path, ossification=False, target_accept=0.95)
    parameters(plain, ["alpha", "beta"], "no omega: ")


def two_sources():
    f, N0, D0, n_lo, n_hi = demo_fit("Two sources", GRIDS / "cpu_python_two_sources.nc")
    pairs = q.pairs(f)
    for N, D_F in [(N0, D0), (n_lo, 8 * KIB), (n_hi, 8 * KIB), (n_hi, 512 * KIB)]:
        m = {p: q.effective_multiplier(f, N, D_F, pair=p, allow_unconverged=True) for p in pairs}
        ratio = m[pairs[1]] / m[pairs[0]] if "text->python" == pairs[0] else m[pairs[0]] / m[pairs[1]]
        print(f"  - N {N:.3g}, D_F {D_F / KIB:.0f} KiB: " + "; ".join(f"{p} {interval(v)}" for p, v in m.items()) +
              f"; English + code over English {interval(ratio)}, P(> 1) {float((ratio > 1).mean()):.2f}")
    parameters(f, ["alpha", "beta", "k"])
    for p in pairs:
        for N in (n_lo, 49440):
            prob = q.ossification_probability(f, N, 2 * MIB, pair=p, allow_unconverged=True)
            driven = q.ossification_prior_driven(f, N, 2 * MIB, pair=p)
            print(f"  - {p}: P(ossified) at N {N:.3g}, 2 MiB: {float(np.asarray(prob).ravel()[0]):.2f}"
                  + (" (prior-driven)" if bool(np.asarray(driven).ravel()[0]) else ""))
    ppc = q.posterior_predictive_table(f)
    print(f"  - runs inside their 90% predictive interval: {ppc['inside'].mean():.0%} of {len(ppc)}")
    sensitivity(f)
    table, fits = beta_sharing_of(f)
    print(f"  - beta sharing: {table[['elpd_loo', 'elpd_diff', 'dse', 'weight']].round(2).to_dict('index')}; "
          + "; ".join(f"{k}: {v.diagnostics()}" for k, v in fits.items()))


def gap():
    path = GRIDS / "cpu_transfer_gap.nc"
    print(f"## Transfer gap ({path.name})")
    f = timed_fit("demo fit", path)
    n_max = int(f.idata.sample_stats["n_steps"].values.max())
    at_cap = int((f.idata.sample_stats["n_steps"].values >= 2**f.sampler["max_tree_depth"] - 1).sum())
    print(f"  - draws at the maximum tree depth: {at_cap} (max steps {n_max})")
    for pair in q.pairs(f):
        m = q.gap_multiplier(f, np.array([1 * MIB, 4 * MIB, 16 * MIB, np.inf]), pair=pair, allow_unconverged=True)
        print(f"  - {pair}: " + "; ".join(f"p {p / MIB:g} MiB {interval(m.sel(p=p))}" for p in m["p"].values))
    parameters(f, ["alpha_f", "alpha_p", "A_p", "G", "E"])
    ppc = q.posterior_predictive_table(f)
    print(f"  - runs inside their 90% predictive interval: {ppc['inside'].mean():.0%} of {len(ppc)}")
    wide = sensitivity(f)
    if not wide.converged:  # the wider posterior needs longer chains than the demo's
        wide = sensitivity(f, warmup=2000, draws=4000)
    parameters(wide, ["alpha_p", "G"], "wider priors: ")


SECTIONS = {"main": main_grid, "two_sources": two_sources, "gap": gap}

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", choices=sorted(SECTIONS), action="append")
    for name in ap.parse_args().only or SECTIONS:
        SECTIONS[name]()
