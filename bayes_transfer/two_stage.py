"""The paper's two-stage procedure (invert each fine-tuned run to D_T, then regress), beside the joint fit."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
import xarray as xr

from bayes_transfer import laws
from bayes_transfer.fit import SAMPLE_DIMS, Fit, fit
from bayes_transfer.grid import load_grid
from loss_grid import pair_label


@dataclass(eq=False)
class TwoStage:
    """Hernandez et al.'s procedure: per-run D_T from the inverted scratch law, then a regression.

    ``runs``: each fine-tuned run with D_E, D_T, ``low_data`` (D_F at most
    ``low_data_fraction`` of the data its size needs to come within 1% of
    its infinite-data loss, the regime the paper fitted) and ``used`` (low
    data, D_T finite and > 0). ``params``: per pair, the least-squares k,
    alpha, beta of log D_T = log k + alpha log D_F + beta log N with
    bootstrap (over runs) 5% and 95% quantiles. ``scratch``: the scratch-law
    fit (its posterior median is the point used to invert).
    """

    runs: pd.DataFrame
    params: pd.DataFrame
    scratch: Fit


def two_stage(
    grid, *, scratch_law: str = "kaplan", method: str = "map", low_data_fraction: float | None = 0.1, n_boot: int = 1000, seed: int = 0, **fit_kwargs
) -> TwoStage:
    """The paper's two-stage fit: scratch law, invert each fine-tuned run, regress log D_T per pair.

    ``low_data_fraction=None`` regresses on every run with a positive D_T;
    in the high-data regime D_T is a small difference of large numbers and
    the inversion amplifies noise, which is why the paper left it out.
    """
    grid = load_grid(grid)
    if grid.finetuned.empty:
        raise ValueError("two_stage needs fine-tuned runs, and the grid has none")
    form = laws.scratch(scratch_law)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="law .* fits scratch runs only")
        scratch = fit(grid, law=scratch_law, method=method, seed=seed, **fit_kwargs)
    # medians: means of heavy-tailed natural-scale parameters are not a point of the posterior
    point = scratch.posterior[list(form.params)].median(SAMPLE_DIMS)
    ft = grid.finetuned.copy()
    missing = sorted(set(ft["target"]) - set(point["target"].values.tolist()))
    if missing:
        raise ValueError(f"two_stage needs from-scratch runs of each target; none for {missing}")
    theta = {n: point[n].sel(target=xr.DataArray(ft["target"].to_numpy(), dims="r")).values for n in form.params}
    N, D_F = ft["n_params"].to_numpy(), ft["data_tokens"].to_numpy()
    D_E = np.asarray(form.invert(N, ft["loss"].to_numpy(), theta))
    D_near = np.asarray(form.data_to_converge(N, theta))
    ft["D_E"] = D_E
    ft["D_T"] = D_E - D_F
    ft["low_data"] = D_F <= low_data_fraction * D_near if low_data_fraction is not None else True
    ft["used"] = ft["low_data"] & np.isfinite(ft["D_T"]) & (ft["D_T"] > 0)
    bad = int((ft["low_data"] & ~ft["used"]).sum())
    if bad:
        warnings.warn(
            f"two_stage: {bad} low-data fine-tuned run(s) left out of the regression: D_T <= 0 (pre-training hurt) "
            "or infinite (loss at or below the scratch law's floor); see TwoStage.runs['used']",
            stacklevel=2,
        )
    rng = np.random.default_rng(seed)
    rows = []
    for (s, t), g in ft[ft["used"]].groupby(["source", "target"]):
        if len(g) < 4 or g["data_tokens"].nunique() < 2 or g["n_params"].nunique() < 2:
            warnings.warn(f"two_stage: pair {pair_label(s, t)!r} has too few usable runs ({len(g)}) to regress", stacklevel=2)
            continue
        X = np.column_stack([np.ones(len(g)), np.log(g["data_tokens"]), np.log(g["n_params"])])
        yv = np.log(g["D_T"].to_numpy())
        coef = np.linalg.lstsq(X, yv, rcond=None)[0]
        boot = []
        for _ in range(n_boot):
            idx = rng.integers(0, len(g), len(g))
            if np.linalg.matrix_rank(X[idx]) == 3:
                boot.append(np.linalg.lstsq(X[idx], yv[idx], rcond=None)[0])
        boot = np.asarray(boot)
        row = {"pair": pair_label(s, t), "source": s, "target": t, "n_runs": len(g)}
        for i, name in enumerate(("k", "alpha", "beta")):
            est, lo, hi = coef[i], np.quantile(boot[:, i], 0.05), np.quantile(boot[:, i], 0.95)
            if name == "k":
                est, lo, hi = np.exp(est), np.exp(lo), np.exp(hi)
            row.update({name: est, f"{name}_5%": lo, f"{name}_95%": hi})
        rows.append(row)
    return TwoStage(runs=ft.reset_index(drop=True), params=pd.DataFrame(rows).set_index("pair") if rows else pd.DataFrame(), scratch=scratch)
