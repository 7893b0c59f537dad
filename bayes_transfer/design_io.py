"""Inputs and outputs of ``design``: the candidates table, the law's domain, trainer specs, a prior-only fit.

The candidates table is the one ``transfer-train grid price`` writes
(docs/loss_grid.md, "The candidates table"). The chosen runs are written as
one trainer spec (TOML) listing them as ``[[run]]`` tables (``run_spec``),
with the fitted grid's [pretrain] and [train] so that they train the same way
and reuse its pre-training runs.
"""

from __future__ import annotations

import json
import tomllib
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

import loss_grid as lg
from bayes_transfer import laws
from bayes_transfer import quantities as q

COSTS = (lg.COST_CORE_HOURS, lg.COST_FLOPS)


def flat_draws(da) -> np.ndarray:
    """A quantity's posterior draws as one vector, chain by chain (the order weights are in)."""
    return da.transpose(*q.SAMPLE_DIMS, ...).values.reshape(-1)


# ---------------------------------------------------------------- candidates


def load_candidates(candidates, cost: str = lg.COST_CORE_HOURS) -> pd.DataFrame:
    """The candidates table (DataFrame or CSV path), checked; ``cost`` names the cost column."""
    if isinstance(candidates, (str, Path)):
        path = Path(candidates)
        if not path.is_file():
            raise FileNotFoundError(f"no such candidates table: {path}")
        df = pd.read_csv(path, comment="#")
    elif isinstance(candidates, pd.DataFrame):
        df = candidates.copy()
    else:
        raise ValueError(f"candidates must be a DataFrame or a CSV path, got {type(candidates).__name__}")
    if cost not in COSTS:
        raise ValueError(f"unknown cost column {cost!r}; expected one of {COSTS}")
    df = df.rename(columns=lambda c: str(c).strip())
    missing = [c for c in (lg.N_PARAMS, lg.DATA_TOKENS, cost) if c not in df.columns]
    if missing:
        raise ValueError(f"candidates table lacks column(s) {missing}; columns are {list(lg.CANDIDATE_COLUMNS)}")
    if df.empty:
        raise ValueError("the candidates table has no rows")
    for col, default in ((lg.SOURCE, lg.SCRATCH), (lg.PRETRAIN_TOKENS, 0), (lg.SEED, 0), (lg.PRETRAIN_SEED, -1)):
        if col not in df.columns:
            df[col] = default
    for col in (lg.N_PARAMS, lg.DATA_TOKENS, lg.PRETRAIN_TOKENS, cost):
        df[col] = pd.to_numeric(df[col], errors="coerce")
        bad = df.index[~np.isfinite(df[col]) | (df[col] < 0) | ((df[col] == 0) & (col != lg.PRETRAIN_TOKENS))]
        if len(bad):
            raise ValueError(f"candidates rows {list(bad[:8])}: {col} must be a positive finite number")
    df[lg.SOURCE] = df[lg.SOURCE].astype(str)
    cell = [c for c in (*lg.CELL, lg.PRETRAIN_SEED) if c in df.columns]
    dup = df.index[df.duplicated(cell, keep=False)]
    if len(dup):
        raise ValueError(f"candidates rows {list(dup[:8])} are the same run ({', '.join(cell)} agree)")
    return df.reset_index(drop=True)


def check_domain(fit, cands: pd.DataFrame) -> None:
    """Refuse candidates the fitted law cannot predict, naming the rows."""
    runs = q.fit_runs(fit)
    targets = sorted(set(map(str, fit.posterior["target"].values))) if "target" in fit.posterior.dims else None
    pairs = set(q.pairs(fit))
    if lg.TARGET not in cands.columns:
        if targets is None or len(targets) != 1:
            raise ValueError(f"candidates table lacks a target column and the fit has targets {targets}")
        cands[lg.TARGET] = targets[0]
    problems = []
    for i, row in cands.iterrows():
        src, tgt = row[lg.SOURCE], str(row[lg.TARGET])
        where = f"candidate row {i} ({src}->{tgt}, N={row[lg.N_PARAMS]:g}, D_F={row[lg.DATA_TOKENS]:g})"
        if targets is not None and tgt not in targets:
            problems.append(f"{where}: target {tgt!r} is not in the fit ({targets})")
        elif laws.of(fit).kind == "scratch" and src != lg.SCRATCH:
            problems.append(f"{where}: a {fit.law!r} fit describes from-scratch runs only")
        elif src != lg.SCRATCH and lg.pair_label(src, tgt) not in pairs:
            problems.append(f"{where}: pair {src}->{tgt} is not in the fit ({sorted(pairs)})")
        elif src != lg.SCRATCH and row[lg.PRETRAIN_TOKENS] <= 0:
            problems.append(f"{where}: a pre-trained run needs pretrain_tokens > 0")
        elif src == lg.SCRATCH and row[lg.PRETRAIN_TOKENS] != 0:
            problems.append(f"{where}: a from-scratch run has pretrain_tokens 0")
        elif laws.of(fit).kind == "transfer" and src != lg.SCRATCH:
            seen = runs[(runs[lg.SOURCE] == src) & (runs[lg.TARGET] == tgt)][lg.PRETRAIN_TOKENS].unique()
            if len(seen) and not np.any(np.isclose(seen, row[lg.PRETRAIN_TOKENS], rtol=1e-9)):
                problems.append(f"{where}: the transfer law has no term for pre-training amount; the fit measured "
                                f"pretrain_tokens {sorted(seen.tolist())}, not {row[lg.PRETRAIN_TOKENS]:g}")
        elif laws.of(fit).kind == "gap":
            size = (getattr(fit, "config", None) or {}).get("n_params") or float(runs[lg.N_PARAMS].iloc[0])
            if not np.isclose(row[lg.N_PARAMS], size, rtol=1e-9):
                problems.append(f"{where}: the transfer-gap law is at one model size (N={size:g})")
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise ValueError("candidates outside the law's domain: " + "; ".join(problems[:3]) + more)


def pretrain_runs_of(fit) -> dict:
    """The fit's pre-training runs (its ``pretrain_run`` labels) -> (source, n_params, seed).

    The labels are the grid's own (``models.pretrain_groups``); the seed is the
    one the trainer recorded for that run (the grid's ``pretrain`` attribute),
    -1 where the grid does not say.
    """
    from bayes_transfer.models import pretrain_groups

    runs = fit.grid.runs
    ft = (runs[lg.SOURCE] != lg.SCRATCH).to_numpy()
    idx, labels = pretrain_groups(runs, ft)
    try:
        recorded = json.loads((fit.grid.attrs or {}).get(lg.ATTR_PRETRAIN) or "{}")
    except ValueError:
        recorded = {}
    out = {}
    for i, label in enumerate(labels):
        row = runs.iloc[int(np.flatnonzero(idx == i)[0])]
        seed = recorded.get(label, {}).get("seed", -1) if isinstance(recorded, dict) else -1
        out[label] = (str(row[lg.SOURCE]), round(float(row[lg.N_PARAMS])), int(seed))
    return out


def candidate_predictions(fit, cands: pd.DataFrame):
    """Per candidate and draw: predicted log-loss mu (C, S), noise scale (C, S); nu per draw (S,).

    Also the ``extrapolated`` flag of each candidate (outside the measured ranges).
    """
    post = fit.posterior
    kinds = [str(k) for k in post["kind"].values] if "kind" in post["sigma"].dims else None
    shared = None
    if "sigma_pretrain" in post and "pretrain_z" in post:
        z = post["pretrain_z"]
        dim = next(d for d in z.dims if d not in q.SAMPLE_DIMS)
        where = pretrain_runs_of(fit)
        runs = {where[str(label)]: flat_draws(z.sel({dim: label})) for label in z[dim].values
                if str(label) in where}
        shared = {"scale": flat_draws(post["sigma_pretrain"]), "runs": runs}
    mu, sig, extrap = [], [], []
    for _, row in cands.iterrows():
        src, tgt = row[lg.SOURCE], str(row[lg.TARGET])
        N, D, p = float(row[lg.N_PARAMS]), float(row[lg.DATA_TOKENS]), float(row[lg.PRETRAIN_TOKENS])
        if laws.of(fit).kind == "scratch":
            loss = q.predicted_loss(fit, N, D, target=tgt if "target" in post.dims else None)
        elif laws.of(fit).kind == "transfer":
            loss = (q.predicted_loss(fit, N, D, p=0, target=tgt) if src == lg.SCRATCH
                    else q.predicted_loss(fit, N, D, pair=lg.pair_label(src, tgt)))
        else:
            pair = lg.pair_label(src, tgt) if src != lg.SCRATCH else next(
                x for x in q.pairs(fit) if lg.split_pair(x)[1] == tgt)
            loss = q.predicted_loss(fit, N, D, p=p, pair=pair)
        mu.append(np.log(flat_draws(loss)))
        extrap.append(bool(loss.attrs.get("extrapolated", False)))
        sigma = post["sigma"]
        if kinds is not None:
            kind = "scratch" if src == lg.SCRATCH else next((k for k in kinds if k != "scratch"), kinds[0])
            sigma = sigma.sel(kind=kind if kind in kinds else kinds[-1])
        sigma = flat_draws(sigma)
        if src != lg.SCRATCH and shared is not None:
            # one effect per pre-training run: a run it already has shares its draws' effect,
            # a new pre-training run brings a fresh one (folded into the noise, see module notes)
            seed = int(row.get(lg.PRETRAIN_SEED, -1))
            z = shared["runs"].get((src, round(N), seed))
            if z is None and seed < 0:  # the candidate does not say which: the one run of its size, if one
                same = [v for k, v in shared["runs"].items() if k[:2] == (src, round(N))]
                z = same[0] if len(same) == 1 else None
            if z is not None:
                mu[-1] = mu[-1] + shared["scale"] * z
            else:
                sigma = np.sqrt(sigma ** 2 + shared["scale"] ** 2)
        sig.append(sigma)
    nu = flat_draws(post["nu"]) if "nu" in post else np.full(len(mu[0]), np.inf)
    return np.array(mu), np.array(sig), nu, np.array(extrap)


# ---------------------------------------------------------------- a fit from the prior alone


def prior_fit(candidates, law: str = "transfer", *, seed: int = 0, **fit_kwargs):
    """A Fit whose draws are the prior's, centred on the candidates' design: the first batch needs no runs.

    The model is built on the candidate cells with placeholder losses (the
    priors of scale parameters apply at the design's centre, priors.py); only
    its prior draws are kept (``Fit.prior``, the law's own prior sampler).
    """
    from bayes_transfer.fit import Fit
    from bayes_transfer.fit import fit as fit_law

    cands = load_candidates(candidates, cost=next(c for c in COSTS if c in _columns(candidates)))
    table = cands[[lg.N_PARAMS, lg.DATA_TOKENS, lg.SOURCE, lg.TARGET, lg.PRETRAIN_TOKENS, lg.SEED]].copy()
    table = table.drop_duplicates([lg.TARGET, lg.SOURCE, lg.N_PARAMS, lg.DATA_TOKENS, lg.PRETRAIN_TOKENS, lg.SEED])
    table[lg.LOSS] = 1.0  # a placeholder: only the prior is used
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        base = fit_law(table, law=law, method="map", map_steps=2, seed=seed, progress=False, **fit_kwargs)
    prior = base.prior
    if prior is None:
        raise ValueError("this version of the fit keeps no prior draws; a prior-only design needs them")
    import arviz as az

    sampler = {"method": "prior", "chains": int(prior.sizes["chain"]), "draws": int(prior.sizes["draw"]),
               "seed": seed}
    result = Fit(idata=az.InferenceData(posterior=prior, prior=prior), grid=base.grid, law=base.law,
                 config=dict(base.config, prior_only=True), sampler=sampler)
    return result.accept_unconverged() if hasattr(result, "accept_unconverged") else result


def _columns(candidates):
    if isinstance(candidates, pd.DataFrame):
        return list(candidates.columns)
    return list(pd.read_csv(candidates, comment="#", nrows=0).columns)


# ---------------------------------------------------------------- trainer specs


def spec_base(fit) -> dict:
    """[pretrain] and [train] of the spec that made the fit's grid: new runs are trained the same way.

    [pretrain].checkpoints lists every pre-training amount of that spec: a
    pre-training run's identity includes its checkpoints, so the new spec's
    pre-training runs are the grid's own and ``grid run`` into the grid's
    directory reuses them instead of pre-training again.
    """
    text = (getattr(fit.grid, "attrs", None) or {}).get(lg.ATTR_SPEC)
    if not text:
        return {}
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return {}
    base = {k: dict(raw[k]) for k in ("pretrain", "train") if isinstance(raw.get(k), dict)}
    grid = raw.get("grid") if isinstance(raw.get("grid"), dict) else {}
    runs = [r for r in raw.get("run", []) if isinstance(r, dict)]
    amounts = set(base.get("pretrain", {}).get("checkpoints", []))
    if any(s != lg.SCRATCH for s in grid.get("sources", [])):
        amounts |= {p for p in grid.get("pretrain_tokens", []) if isinstance(p, int) and p > 0}
    amounts |= {r["pretrain_tokens"] for r in runs if isinstance(r.get("pretrain_tokens"), int)
                and r["pretrain_tokens"] > 0}
    if amounts:
        base.setdefault("pretrain", {})["checkpoints"] = sorted(amounts)
    return base


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return str(int(v)) if float(v).is_integer() else repr(float(v))
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"cannot write {v!r} to TOML")


def _toml_key(k: str) -> str:
    return k if k.replace("_", "").replace("-", "").isalnum() else _toml_value(str(k))


def run_spec(table: pd.DataFrame, base: dict, name: str = "next_runs") -> str:
    """TOML text of one trainer spec whose cells are exactly the runs of ``table`` ([[run]] tables)."""
    if lg.SIZE not in table.columns:
        raise ValueError("the candidates table has no `size` column (the trainer's name of each architecture): "
                         "cannot write a trainer spec")
    lines = ["# Chosen by bayes-transfer next-runs; [pretrain] and [train] copied from the spec of the fitted",
             "# grid, so these runs train the same way and reuse its pre-training in the same directory.",
             f"name = {_toml_value(name)}",
             f"description = {_toml_value(f'{len(table)} run(s) chosen to sharpen the target')}"]
    fine_tuned = table[table[lg.SOURCE] != lg.SCRATCH]
    pre = dict(base.get("pretrain", {}))
    if len(fine_tuned) and pre:
        pre["tokens"] = max(int(pre.get("tokens", 0)), int(fine_tuned[lg.PRETRAIN_TOKENS].max()))
        lines += ["", "[pretrain]"] + [f"{k} = {_toml_value(v)}" for k, v in pre.items()]
    if base.get("train"):
        lines += ["", "[train]"] + [f"{k} = {_toml_value(v)}" for k, v in base["train"].items()]
    for r in table.itertuples(index=False):
        run = {"size": str(getattr(r, lg.SIZE)), "target": str(getattr(r, lg.TARGET)),
               "source": str(getattr(r, lg.SOURCE)), "data_tokens": int(getattr(r, lg.DATA_TOKENS))}
        if run["source"] != lg.SCRATCH:
            run["pretrain_tokens"] = int(getattr(r, lg.PRETRAIN_TOKENS))
            if int(getattr(r, lg.PRETRAIN_SEED, -1)) >= 0:
                run["pretrain_seed"] = int(getattr(r, lg.PRETRAIN_SEED))
        run["seed"] = int(getattr(r, lg.SEED))
        lines += ["", "[[run]]"] + [f"{k} = {_toml_value(v)}" for k, v in run.items()]
    return "\n".join(lines) + "\n"
