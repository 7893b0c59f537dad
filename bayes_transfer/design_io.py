"""Inputs and outputs of ``design``: the candidates table, the law's domain, trainer specs, a prior-only fit.

The candidates table is the one ``transfer-train grid price`` writes
(docs/loss_grid.md, "The candidates table"). The specs are the trainer's
TOML grid format: a spec expands to a factorial product of its lists, so an
arbitrary set of runs is written as the fewest specs whose cells are exactly
those runs (``run_specs``).
"""

from __future__ import annotations

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
    for col, default in ((lg.SOURCE, lg.SCRATCH), (lg.PRETRAIN_TOKENS, 0), (lg.SEED, 0)):
        if col not in df.columns:
            df[col] = default
    for col in (lg.N_PARAMS, lg.DATA_TOKENS, lg.PRETRAIN_TOKENS, cost):
        df[col] = pd.to_numeric(df[col], errors="coerce")
        bad = df.index[~np.isfinite(df[col]) | (df[col] < 0) | ((df[col] == 0) & (col != lg.PRETRAIN_TOKENS))]
        if len(bad):
            raise ValueError(f"candidates rows {list(bad[:8])}: {col} must be a positive finite number")
    df[lg.SOURCE] = df[lg.SOURCE].astype(str)
    cell = [c for c in lg.CELL if c in df.columns]
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
        runs = {}
        for label in z[dim].values:
            source, _, n = str(label).partition("/")
            runs[(source, round(float(n.split("/")[0])))] = flat_draws(z.sel({dim: label}))
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
            z = shared["runs"].get((src, round(N)))
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
    """[pretrain] and [train] of the spec that made the fit's grid: new runs are trained the same way."""
    text = (getattr(fit.grid, "attrs", None) or {}).get(lg.ATTR_SPEC)
    if not text:
        return {}
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return {}
    return {k: raw[k] for k in ("pretrain", "train") if isinstance(raw.get(k), dict)}


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


def _blocks(table: pd.DataFrame) -> list[dict]:
    """The chosen runs as factorial [grid] blocks that expand to exactly those runs.

    One block per (target, source, pretrain_tokens, seed); within it, sizes share
    one data_tokens list when each size's D_F set is that list cut at a maximum
    (data_tokens_max_by_size), else one block per distinct D_F set.
    """
    if lg.SIZE not in table.columns:
        raise ValueError("the candidates table has no `size` column (the trainer's name of each architecture): "
                         "cannot write a trainer spec")
    blocks = []
    keys = [lg.TARGET, lg.SOURCE, lg.PRETRAIN_TOKENS, lg.SEED]
    for (tgt, src, p, seed), g in table.groupby(keys, sort=True):
        by_size = {s: sorted(set(int(d) for d in gg[lg.DATA_TOKENS])) for s, gg in g.groupby(lg.SIZE, sort=False)}
        order = sorted(by_size, key=lambda s: float(g[g[lg.SIZE] == s][lg.N_PARAMS].iloc[0]))
        union = sorted(set().union(*by_size.values()))
        staircase = all(by_size[s] == [d for d in union if d <= max(by_size[s])] for s in order)
        if staircase:
            groups = [order]
        else:  # sizes with the same D_F set form one exact product
            same: dict[tuple, list] = {}
            for s in order:
                same.setdefault(tuple(by_size[s]), []).append(s)
            groups = list(same.values())
        for sizes in groups:
            ds = sorted(set().union(*(by_size[s] for s in sizes)))
            grid = {"sizes": [str(s) for s in sizes], "targets": [str(tgt)], "sources": [str(src)],
                    "data_tokens": ds}
            if src != lg.SCRATCH:
                grid["pretrain_tokens"] = [int(p)]
            grid["seeds"] = [int(seed)]
            caps = {str(s): max(by_size[s]) for s in sizes if max(by_size[s]) < max(ds)}
            if caps:
                grid["data_tokens_max_by_size"] = caps
            blocks.append(grid)
    return blocks


def run_specs(table: pd.DataFrame, base: dict, name: str = "next_runs") -> list[str]:
    """TOML text of trainer spec(s) whose cells are exactly the runs of ``table``."""
    texts = []
    blocks = _blocks(table)
    for i, grid in enumerate(blocks, 1):
        label = name if len(blocks) == 1 else f"{name}_{i}"
        lines = [f"# Chosen by bayes-transfer next-runs ({i} of {len(blocks)} specs); [pretrain] and [train]",
                 "# copied from the spec of the fitted grid, so these runs train the same way.",
                 f"name = {_toml_value(label)}",
                 f"description = {_toml_value(f'{len(table)} run(s) chosen to sharpen the target')}", "", "[grid]"]
        lines += [f"{k} = {_toml_value(v)}" for k, v in grid.items()]
        pre = dict(base.get("pretrain", {}))
        if grid["sources"] != [lg.SCRATCH] and pre:
            pre["tokens"] = max(int(pre.get("tokens", 0)), grid["pretrain_tokens"][0])
            lines += ["", "[pretrain]"] + [f"{k} = {_toml_value(v)}" for k, v in pre.items()]
        if base.get("train"):
            lines += ["", "[train]"] + [f"{k} = {_toml_value(v)}" for k, v in base["train"].items()]
        texts.append("\n".join(lines) + "\n")
    return texts
