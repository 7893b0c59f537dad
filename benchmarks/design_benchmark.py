"""Does choosing runs by `next_runs` reach a target width for less compute? A simulation.

For each simulated truth (a transfer law near the one the CPU grid measured,
parameters perturbed per truth) the same seed design is fitted, then three
ways of spending compute are compared on the 90% interval width of the
target (log effective-data multiplier at N=3.3e5, D_F=32768):

- factorial: every candidate cell (all sizes x D_F x {scratch, text}, one seed), fitted once;
- design: rounds of next_runs (budget per round) -> simulated training from the truth -> refit;
- random: rounds of random candidates of the same cost per round -> refit.

Reported: per truth, the compute each method needs to reach the factorial
grid's width (median over truths), and a figure of width against compute.
Costs are a stand-in for `transfer-train grid price`: 6 N FLOPs per token
over the tokens trainer/spec.py expects a run to train before early stopping.

`--check-refit K` instead compares the importance-weighted expected
posterior variance with brute force: K simulated outcomes of the chosen run,
each refitted with NUTS.

Usage. The full setting is 20 truths x (seed + factorial + 2 x 6 rounds) = 280
NUTS fits: about 3.5 hours on an idle 2-core CPU at ~45 s a fit, several
times that on a shared one; truths are independent, so a many-core machine
can run them side by side. The full setting, then a reduced check:
    python benchmarks/design_benchmark.py --truths 20 --rounds 6 --out bench-design/
    python benchmarks/design_benchmark.py --truths 1 --rounds 2 --chains 1 --draws 500 --warmup 300 --worlds 64
Add --time-limit SECONDS to stop starting fits after that long; fits are
cached in OUT/fits, so the same command goes on where it stopped.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

import bayes_transfer as bt
from bayes_transfer.design import (
    Preposterior,
    candidate_predictions,
    next_runs,
    parse_target,
    target_draws,
)
from bayes_transfer.models import simulate_losses

TRUTH = dict(N_c=1.5e6, D_c=1.5e6, alpha_N=0.15, alpha_D=0.3, k=30.0, alpha=0.3, beta=0.38, omega=0.0)
SIZES = {"25k": (2, 32), "100k": (2, 64), "330k": (3, 96), "800k": (4, 128)}
DATA = (8192, 32768, 131072, 524288)
PRETRAIN = 4194304
TARGET = "multiplier:N=3.3e5,D_F=32768"
SIGMA = 0.02


def n_params(size: str) -> int:
    L, d = SIZES[size]
    return 12 * L * d * d + (2 * L + 1) * d  # the trainer's non-embedding count


def candidates(seeds=(0, 1)) -> pd.DataFrame:
    """Every cell the study could run, with a stand-in cost (core-hours at 3 GFLOP/s)."""
    rows = []
    for size in SIZES:
        for D in DATA:
            for src in ("none", "text"):
                for seed in seeds:
                    tokens = 1e6 * (D / 8192) ** 0.6 * (1.0 if src == "none" else 0.6)  # trainer/spec.py
                    flops = 6 * n_params(size) * tokens
                    rows.append(dict(size=size, n_params=n_params(size), data_tokens=D, source=src, target="python",
                                     pretrain_tokens=0 if src == "none" else PRETRAIN, seed=seed,
                                     cost_core_hours=flops / 3e9 / 3600, cost_flops=flops))
    return pd.DataFrame(rows)


def truth(i: int) -> dict:
    rng = np.random.default_rng(1000 + i)
    t = dict(TRUTH)
    t["k"] *= float(np.exp(0.5 * rng.standard_normal()))
    t["alpha"] *= float(np.exp(0.2 * rng.standard_normal()))
    t["beta"] *= float(np.exp(0.15 * rng.standard_normal()))
    t["alpha_D"] *= float(np.exp(0.1 * rng.standard_normal()))
    return t


def train(cells: pd.DataFrame, params: dict, seed: int) -> pd.DataFrame:
    """Simulated training: the law at the truth plus log-normal noise."""
    design = cells[["n_params", "data_tokens", "source", "target", "pretrain_tokens", "seed"]]
    return simulate_losses(design, "transfer", params, sigma=SIGMA, seed=seed)


class OutOfTime(Exception):
    """The time limit passed: what is done is saved, a rerun goes on from there."""


def fit(runs: pd.DataFrame, args, name: str | None = None):
    """NUTS fit of the runs, cached under OUT/fits/NAME.nc so that a rerun resumes."""
    path = args.out / "fits" / f"{name}.nc" if name else None
    if path is not None and path.exists():
        f = bt.load_fit(path)
    else:
        if time.perf_counter() - T0 > args.time_limit:
            raise OutOfTime
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            f = bt.fit(runs, law="transfer", chains=args.chains, draws=args.draws, warmup=args.warmup,
                       progress=False, seed=0)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            f.save(path)
    return f.accept_unconverged() if hasattr(f, "accept_unconverged") else f


T0 = time.perf_counter()


def width(f) -> float:
    values, _ = target_draws(f, parse_target(TARGET))
    lo, hi = np.quantile(values, [0.05, 0.95])
    return float(hi - lo)


def seed_design(cands):
    pick = cands[(cands.seed == 0) & cands["size"].isin(["25k", "330k"]) & cands.data_tokens.isin([8192, 131072])]
    return pick.index.tolist()


def run_truth(i: int, cands: pd.DataFrame, args) -> list[dict]:
    params = truth(i)
    rows = []
    seed_idx = seed_design(cands)
    seed_runs = train(cands.loc[seed_idx], params, seed=10 * i)
    base = fit(seed_runs, args, f"t{i}_seed")
    c0 = float(cands.loc[seed_idx, args.cost].sum())
    for method in ("seed",):
        rows.append(dict(truth=i, method=method, round=0, compute=c0, width=width(base), runs=len(seed_idx)))
    full = cands[cands.seed == 0]
    f_full = fit(train(full, params, seed=10 * i + 1), args, f"t{i}_factorial")
    rows.append(dict(truth=i, method="factorial", round=1, compute=float(full[args.cost].sum()),
                     width=width(f_full), runs=len(full)))
    rng = np.random.default_rng(i)
    for method in ("design", "random"):
        done, runs, f, compute = list(seed_idx), seed_runs, base, c0
        for r in range(1, args.rounds + 1):
            pool = cands.drop(index=done)
            if pool.empty:
                break
            if method == "design":
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    choice = next_runs(f, pool, target=TARGET, budget=args.round_budget, cost=args.cost,
                                       n_worlds=args.worlds, allow_unconverged=True)
                chosen = _rows_of(choice.table, pool)
            else:
                order = rng.permutation(pool.index)
                chosen, spent = [], 0.0
                for j in order:
                    if spent + pool.loc[j, args.cost] <= args.round_budget:
                        chosen.append(j)
                        spent += pool.loc[j, args.cost]
            if len(chosen) == 0:
                break
            done += list(chosen)
            runs = pd.concat([runs, train(cands.loc[chosen], params, seed=100 * i + r)], ignore_index=True)
            compute += float(cands.loc[chosen, args.cost].sum())
            f = fit(runs, args, f"t{i}_{method}_r{r}")
            rows.append(dict(truth=i, method=method, round=r, compute=compute, width=width(f), runs=len(done)))
            print(json.dumps(rows[-1]), flush=True)
    return rows


def _rows_of(table: pd.DataFrame, pool: pd.DataFrame) -> list:
    """Index labels in `pool` of the chosen runs (matched on the cell columns)."""
    key = ["size", "data_tokens", "source", "target", "pretrain_tokens", "seed"]
    merged = pool.reset_index().merge(table[key], on=key)
    return merged["index"].tolist()


def summarise(df: pd.DataFrame, rounds: int) -> pd.DataFrame:
    """Per truth whose rounds all finished: compute at which each method first reaches the
    factorial grid's width (infinite where it never did, so a median counts those truths too)."""
    out = []
    for i, g in df.groupby("truth"):
        if not all((g.method == m).sum() == rounds for m in ("design", "random")):
            continue  # cut short by the time limit: its misses are not yet known
        fac = g[g.method == "factorial"].iloc[0]
        row = {"truth": i, "factorial_width": fac.width, "factorial_compute": fac.compute}
        for m in ("design", "random"):
            hit = g[(g.method == m) & (g.width <= fac.width)]
            row[f"{m}_compute"] = float(hit.compute.min()) if len(hit) else np.inf
        out.append(row)
    s = pd.DataFrame(out)
    for m in ("design", "random"):
        s[f"{m}_share_of_factorial"] = s[f"{m}_compute"] / s["factorial_compute"]
    return s


def figure(df: pd.DataFrame, truths, path: Path) -> None:
    """Width against compute, both as fractions of the factorial grid's, per truth (thin) and
    their median per round (thick): below 1 on the y axis left of 1 on the x axis is a win."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    colours = {"design": "C0", "random": "C1"}
    df = df[df.truth.isin(list(truths))]
    rel = []
    for i, g in df.groupby("truth"):
        fac = g[g.method == "factorial"].iloc[0]
        for m in colours:
            c = pd.concat([g[g.method == "seed"], g[g.method == m]]).sort_values("compute")
            x, y = c.compute / fac.compute, c.width / fac.width
            ax.plot(x, y, color=colours[m], lw=0.6, alpha=0.35)
            rel.append(pd.DataFrame({"method": m, "step": range(len(c)), "x": x.values, "y": y.values}))
    med = pd.concat(rel).groupby(["method", "step"])[["x", "y"]].median().reset_index()
    for m, g in med.groupby("method"):
        ax.plot(g.x, g.y, color=colours[m], lw=2.2, marker="o", ms=4, label=f"{m} (median of {df.truth.nunique()})")
    ax.plot([1], [1], marker="s", color="C3", ls="none", ms=8, label="full factorial grid")
    ax.axhline(1, color="C3", lw=0.8, ls="--")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("compute spent / the factorial grid's")
    ax.set_ylabel("90% interval width of log multiplier / the factorial's")
    ax.set_title("Choosing runs by expected variance reduction vs random picks")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def check_refit(args) -> None:
    """Importance-weighted expected posterior variance vs NUTS refits on K simulated outcomes of one run."""
    cands = candidates(seeds=(1,))
    params = truth(0)
    seed_idx = seed_design(candidates(seeds=(0,)))
    seed_runs = train(candidates(seeds=(0,)).loc[seed_idx], params, seed=0)
    base = fit(seed_runs, args, "refit_base")
    values, _ = target_draws(base, parse_target(TARGET))
    mu, sig, nu, _ = candidate_predictions(base, cands)
    engine = Preposterior(values, mu, sig, nu, n_worlds=args.check_refit, seed=1)
    gains = [values.var() - engine.criterion([c])[0].mean() for c in range(len(cands))]
    c = int(np.argmax(gains))
    crit, ess = engine.criterion([c])
    print(f"run {cands.iloc[c][['size', 'source', 'data_tokens']].to_dict()}: posterior variance now "
          f"{values.var(ddof=1):.4g}; importance-weighted expectation after it {crit.mean():.4g}", flush=True)
    rows = []
    for m in range(args.check_refit):
        run = cands.iloc[[c]].copy()
        run["loss"] = float(np.exp(engine.y[m, c]))
        try:
            f = fit(pd.concat([seed_runs, run[seed_runs.columns]], ignore_index=True), args, f"refit_world{m}")
        except OutOfTime:
            break
        v, _ = target_draws(f, parse_target(TARGET))
        rows.append(dict(world=m, importance_weighted_var=float(crit[m]), refit_var=float(v.var(ddof=1)),
                         ess=float(ess[m])))
    out = pd.DataFrame(rows)
    if out.empty:
        print("time limit reached before any refit: rerun to go on (fits are cached)")
        return
    out.to_csv(args.out / "refit_check.csv", index=False)
    print(out.to_string(index=False))
    print(f"mean over {len(out)} worlds: importance-weighted {out.importance_weighted_var.mean():.4g}, "
          f"refit {out.refit_var.mean():.4g}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--truths", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--round-budget", type=float, default=3.0,
                    help="stand-in core-hours per round (the factorial grid costs 22.9)")
    ap.add_argument("--cost", default="cost_core_hours")
    ap.add_argument("--chains", type=int, default=2)
    ap.add_argument("--draws", type=int, default=500)
    ap.add_argument("--warmup", type=int, default=500)
    ap.add_argument("--worlds", type=int, default=128)
    ap.add_argument("--check-refit", type=int, default=0, metavar="K")
    ap.add_argument("--out", type=Path, default=Path("bench-design"))
    ap.add_argument("--time-limit", type=float, default=float("inf"),
                    help="seconds: start no new fit past this; fits are cached in OUT/fits, so a rerun goes on")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.check_refit:
        check_refit(args)
        return
    cands = candidates()
    t0 = time.perf_counter()
    rows = []
    try:
        for i in range(args.truths):
            rows += run_truth(i, cands, args)
    except OutOfTime:
        print("time limit reached: rerun the same command to go on (fits are cached)")
        if not rows:
            return
    df = pd.DataFrame(rows)
    df.to_csv(args.out / "curves.csv", index=False)
    s = summarise(df, args.rounds)
    s.to_csv(args.out / "summary.csv", index=False)
    figure(df, s.truth, args.out / "width_vs_compute.png")
    print(s.to_string(index=False))
    reached = {m: int(np.isfinite(s[f"{m}_share_of_factorial"]).sum()) for m in ("design", "random")}
    print(f"median share of the factorial grid's compute to reach its width (inf: not reached in "
          f"{args.rounds} rounds): design {s.design_share_of_factorial.median():.2f} (reached in {reached['design']}), "
          f"random {s.random_share_of_factorial.median():.2f} (reached in {reached['random']}); "
          f"{len(s)} of {args.truths} truths finished, {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
