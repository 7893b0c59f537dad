"""Where should the next budget go: fine-tuning data, pre-training data or a bigger model?

`recommend` prices each candidate plan under the posterior of a fit:

- all of the budget on fine-tuning data (target tokens at `cost_finetune` each);
- all of it on pre-training data (source tokens at `cost_pretrain` each; only a
  'transfer_gap' fit has the loss as a function of pre-training data);
- all of it on a bigger model (`cost_params` per parameter added; only a fit with
  the loss as a function of N, i.e. 'transfer' or a scratch law);
- the best split of the budget between the two resources the law can price.

A parameter's price is the whole cost of training a model one parameter
larger at the current data amounts. With compute priced per FLOP that is
6 x (tokens seen) x price per FLOP (training costs about 6 N FLOPs per
token), where the tokens seen are the pre-training tokens plus every epoch
over the fine-tuning data: see `cost_params_from_flops`. Give
`price_per_flop` and `recommend` prices it so, with the grid's epochs.

For every plan: the posterior expected loss and its interval, the probability
that it is the best plan, and its expected regret (its loss minus the best
plan's loss on the same draw). The Bayes choice minimises expected loss; the
point-estimate choice minimises the loss at the posterior median parameters,
and `regret_of_point_estimate` is what that shortcut costs in expected loss.
For the transfer-gap law the per-draw optimal split has a closed form
(docs/laws.md): c_f f / (c_p p) = (alpha_f / alpha_p) (1 + G p^alpha_p / A_p).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import xarray as xr

from loss_grid import SCRATCH, split_pair

from . import laws
from . import quantities as q

FINETUNE, PRETRAIN, PARAMS = "fine-tuning data", "pre-training data", "bigger model"
_FLOPS_PER_PARAM_TOKEN = 6
# Budget shares tried for the split: dense near both ends, where optima of
# very unequal prices sit.
_TAIL = np.logspace(-4, -1, 31)
SHARES = np.unique(np.concatenate([[0.0, 1.0], np.linspace(0, 1, 201), _TAIL, 1 - _TAIL]))


def cost_params_from_flops(price_per_flop: float, pretrain_tokens: float, data_tokens: float,
                           epochs: float = 1.0) -> float:
    """Price of one more parameter when a bigger model is retrained on the same data.

    Training costs about 6 FLOPs per parameter per token seen, pre-training and
    fine-tuning alike; fine-tuning sees its data ``epochs`` times.
    """
    positive("price_per_flop", price_per_flop)
    positive("epochs", epochs)
    return _FLOPS_PER_PARAM_TOKEN * (float(pretrain_tokens) + float(epochs) * float(data_tokens)) * float(price_per_flop)


def epochs_seen(fit) -> tuple[float, str]:
    """Median epochs over the fine-tuning data of the fit's fine-tuned runs, and where it comes from."""
    runs = q.fit_runs(fit)
    tuned = runs[runs["source"] != SCRATCH]
    rows = tuned if len(tuned) else runs
    if "tokens_seen" not in rows or rows["tokens_seen"].isna().all():
        return 1.0, "one epoch assumed (the grid records no tokens_seen)"
    e = float(np.nanmedian(rows["tokens_seen"] / rows["data_tokens"]))
    return max(e, 1.0), f"the median epochs of the grid's {'fine-tuned' if len(tuned) else ''} runs (tokens_seen / D_F)"


def gap_optimal_pretrain(C, cost_pretrain, cost_finetune, A_p, alpha_p, G, alpha_f,
                         p_min=0.0, p_max=None, iters: int = 200):
    """Pre-training tokens p minimising the transfer-gap loss on the budget line c_p p + c_f f = C.

    Solves c_f f / (c_p p) = (alpha_f / alpha_p)(1 + G p^alpha_p / A_p) by bisection on log p
    (the left side falls and the right side rises along the line, so the root is unique
    and the loss is unimodal in p), then clips to [p_min, p_max]. Broadcasts over arrays
    of parameters (one per posterior draw). Returns (p, f).
    """
    C, c_p, c_f = (np.asarray(x, dtype=float) for x in (C, cost_pretrain, cost_finetune))
    A_p, alpha_p, G, alpha_f = (np.asarray(x, dtype=float) for x in (A_p, alpha_p, G, alpha_f))
    p_top = C / c_p if p_max is None else np.asarray(p_max, dtype=float)

    def excess(p):  # c_f f - c_p p (b/a)(1 + G p^a / A): positive below the optimum
        return (C - c_p * p) - c_p * p * (alpha_f / alpha_p) * (1 + G * p ** alpha_p / A_p)

    shape = np.broadcast(C, c_p, c_f, A_p, alpha_p, G, alpha_f, p_top).shape
    lo = np.full(shape, np.log(C / c_p) - 60.0)
    hi = np.broadcast_to(np.log(C / c_p), shape).copy()
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        up = excess(np.exp(mid)) > 0
        lo, hi = np.where(up, mid, lo), np.where(up, hi, mid)
    p = np.clip(np.exp(0.5 * (lo + hi)), p_min, p_top)
    return p, (C - c_p * p) / c_f


@dataclass
class Recommendation:
    """The answer of `recommend`: a table of plans, the best one and the assumptions."""

    table: pd.DataFrame
    best: str
    assumptions: dict
    point_estimate_choice: str
    regret_of_point_estimate: float
    optimal_share: xr.DataArray | None = None
    split_resources: tuple[str, str] | None = None
    # expected loss over budget shares on the second resource (chain, draw, share)
    surface: xr.DataArray | None = None
    shares: tuple[float, float] | None = None  # (Bayes, point-estimate) share
    prob: float = 0.9
    notes: list[str] = field(default_factory=list)
    units: tuple[str, str] = ("bytes", "nats/byte")  # (data, loss), as the fitted grid counts them

    def answer(self) -> str:
        return f"Spend the budget on {self.best}."

    def findings(self) -> list[str]:
        """The optimal split's posterior and what choosing by point estimates costs."""
        out = []
        if self.optimal_share is not None:
            a, b = self.split_resources
            lo, med, hi = np.quantile(self.optimal_share.values.ravel(), [(1 - self.prob) / 2, 0.5, (1 + self.prob) / 2])
            out.append(f"Posterior of the optimal share of the budget on {b} (the rest on {a}): "
                       f"median {med:.3f}, {self.prob:.0%} interval {lo:.3f} to {hi:.3f}.")
        out.append(f"Choosing by point estimates (posterior-median parameters) picks "
                   f"'{self.point_estimate_choice}', an expected regret of "
                   f"{self.regret_of_point_estimate:.2e} {self.units[1]} against the Bayes choice.")
        return out

    def caveats(self) -> list[str]:
        """What was not evaluated and why, then every assumption the answer rests on."""
        return list(self.notes) + [f"{key}: {value}" for key, value in self.assumptions.items()]

    def to_markdown(self) -> str:
        """A Markdown summary: the answer, the plan table and the assumptions."""
        lines = [f"**{self.answer()}**", "", *self.findings(), "",
                 markdown_table(display_table(self.table, self.prob, self.units)), ""]
        lines += [f"- {note}" for note in self.notes]
        lines += ["", "Assumptions:", ""] + [f"- **{key}**: {value}" for key, value in self.assumptions.items()]
        return "\n".join(lines) + "\n"


def display_table(table: pd.DataFrame, prob: float, units: tuple[str, str] = ("bytes", "nats/byte")) -> pd.DataFrame:
    """The plan table as strings, for Markdown and HTML; ``units``: (data, loss)."""
    data_unit, loss_unit = units
    pct = f"{prob:.0%}"
    out = pd.DataFrame({"plan": table["plan"]})
    out["spend (fine-tune / pre-train / params)"] = [
        " / ".join(_money(v) for v in row)
        for row in table[["spend_finetune", "spend_pretrain", "spend_params"]].itertuples(index=False)]
    out["N after"] = table["n_params"].map(_num)
    out[f"D_F after ({data_unit})"] = table["data_tokens"].map(_num)
    out[f"p after ({data_unit})"] = table["pretrain_tokens"].map(_num)
    out[f"E[loss] ({loss_unit})"] = table["expected_loss"].map(lambda v: "-" if np.isnan(v) else f"{v:.4f}")
    out[f"{pct} interval"] = [
        "-" if np.isnan(a) else f"{a:.4f} to {b:.4f}" for a, b in zip(table["loss_lower"], table["loss_upper"])]
    out["P(best)"] = table["p_best"].map(lambda v: "-" if np.isnan(v) else f"{v:.2f}")
    out["E[regret]"] = table["expected_regret"].map(lambda v: "-" if np.isnan(v) else f"{v:.2e}")
    out["note"] = [("; ".join(filter(None, ["extrapolated" if ex else "", note])))
                   for ex, note in zip(table["extrapolated"], table["note"])]
    return out


def _num(v) -> str:
    return "-" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.3g}"


def _money(v) -> str:
    return f"{v:.4g}"


def markdown_table(df: pd.DataFrame) -> str:
    """A GitHub Markdown table of a DataFrame's string forms (no extra dependency)."""
    cols = [str(c) for c in df.columns]
    rows = [[str(v).replace("|", "\\|") for v in row] for row in df.itertuples(index=False)]
    head = "| " + " | ".join(cols) + " |"
    rule = "|" + "|".join("---" for _ in cols) + "|"
    return "\n".join([head, rule] + ["| " + " | ".join(r) + " |" for r in rows])


def positive(name: str, value) -> float:
    """``value`` as a float, or a ValueError naming ``name`` unless it is positive and finite."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite amount, got {value}")
    return value


def starting_point(fit, pair, current) -> dict:
    """The starting point: given, or the grid's largest N, D_F and p (each the largest
    measured, together perhaps not a measured cell)."""
    runs = q.fit_runs(fit)
    finetuned = laws.of(fit).finetuned
    rows = runs[runs["source"] != SCRATCH] if finetuned else runs
    if pair is not None and finetuned:
        source, target = split_pair(pair)
        rows = rows[(rows["source"] == source) & (rows["target"] == target)]
    default = {"n_params": float(rows["n_params"].max()), "data_tokens": float(rows["data_tokens"].max()),
               "pretrain_tokens": float(rows["pretrain_tokens"].max()) if "pretrain_tokens" in rows else 0.0}
    current = dict(current or {})
    unknown = set(current) - set(default)
    if unknown:
        raise ValueError(f"unknown key(s) in current: {sorted(unknown)}; expected {sorted(default)}")
    out = {**default, **current}
    for key in ("n_params", "data_tokens"):
        out[key] = positive(f"current {key}", out[key])
    p0 = float(out["pretrain_tokens"])
    if not math.isfinite(p0) or p0 < 0:
        raise ValueError(f"current pretrain_tokens must be finite and >= 0, got {p0}")
    out["pretrain_tokens"] = p0
    return out


def resolve_pair(fit, pair):
    """The pair a recommendation is for: the named one, or the fit's only one."""
    if not laws.of(fit).finetuned:
        if pair is not None:
            raise ValueError(f"a {fit.law!r} fit has no pairs; drop pair={pair!r}")
        return None
    known = q.pairs(fit)
    if pair is None:
        if len(known) != 1:
            raise ValueError(f"the fit has {len(known)} pairs {known}: name one with pair=...")
        return known[0]
    if pair not in known:
        raise ValueError(f"unknown pair {pair!r}; the fit has {known}")
    return pair


def recommend(fit, budget, cost_finetune, cost_pretrain=None, cost_params=None, current=None,
              pair: str | None = None, target: str | None = None, prob: float = 0.9,
              currency: str = "currency units", *, price_per_flop=None, epochs=None,
              allow_unconverged: bool = False) -> Recommendation:
    """Price the plans for spending `budget` under the posterior of `fit`.

    Costs are in the user's currency: `cost_finetune` per fine-tuning token (byte),
    `cost_pretrain` per pre-training token, `cost_params` per parameter added, or
    `price_per_flop` to derive it from the tokens a run sees (``epochs`` over the
    fine-tuning data: by default the grid's; see the module docstring).
    `current` = dict(n_params, data_tokens, pretrain_tokens) is where spending
    starts (default: the grid's largest N, D_F and p of the fine-tuned runs). A fit that did not
    converge raises ``NotConvergedError`` unless ``allow_unconverged``.
    """
    q.checked(fit, allow_unconverged)
    budget = positive("budget", budget)
    c_f = positive("cost_finetune", cost_finetune)
    c_p = None if cost_pretrain is None else positive("cost_pretrain", cost_pretrain)
    if cost_params is not None and price_per_flop is not None:
        raise ValueError("give cost_params or price_per_flop, not both")
    flops_note = None
    if price_per_flop is not None:
        e, source = (positive("epochs", epochs), "given") if epochs is not None else epochs_seen(fit)
        start0 = starting_point(fit, resolve_pair(fit, pair), current)
        cost_params = cost_params_from_flops(price_per_flop, start0["pretrain_tokens"], start0["data_tokens"], e)
        flops_note = (f"6 FLOPs per parameter per token seen x {price_per_flop:g} {currency} per FLOP; tokens seen = "
                      f"pre-training + {e:.3g} epochs x D_F ({source})")
    c_n = None if cost_params is None else positive("cost_params", cost_params)
    if not 0 < prob < 1:
        raise ValueError(f"prob must be in (0, 1), got {prob}")
    affordable = [budget / c for c in (c_f, c_p, c_n) if c is not None]
    if max(affordable) < 1:
        raise ValueError(f"budget {budget:g} buys less than one unit of anything at the given costs "
                         f"(cost_finetune {c_f:g}, cost_pretrain {c_p}, cost_params {c_n})")
    pair = resolve_pair(fit, pair)
    start = starting_point(fit, pair, current)
    law = laws.of(fit)
    if law.finetuned:
        post = q.select_pair(fit, pair)
    else:
        post = q.select_target(fit, target)
        if "target" in post.dims:
            raise ValueError(f"the fit has several targets {list(post['target'].values)}: name one with target=...")
    form = q.scratch_form(fit) if law.kind == "transfer" else None

    # Which resources the law can price, and why not where it cannot.
    prices = {FINETUNE: c_f}
    notes = []
    if law.pretrain_axis:
        if c_p is None:
            notes.append(f"{PRETRAIN}: not evaluated: no cost_pretrain given")
        else:
            prices[PRETRAIN] = c_p
        notes.append(f"{PARAMS}: not evaluated: the transfer-gap law is measured at one model size "
                     f"(N = {start['n_params']:.3g}); it says nothing about other sizes")
    elif not law.has_scratch:
        notes.append(f"{PRETRAIN}: not evaluated: a fine-tuning curve holds its pre-trained model fixed")
        notes.append(f"{PARAMS}: not evaluated: each curve is one model's (N = {start['n_params']:.3g}); "
                     "it says nothing about other sizes")
    else:
        why = ("the transfer law (Hernandez et al.) is measured at one pre-training amount; "
               "fit 'transfer_gap' on a grid with several pretrain_tokens to price it"
               if law.finetuned else f"a {fit.law!r} fit has no pre-training")
        notes.append(f"{PRETRAIN}: not evaluated: {why}")
        if c_n is None:
            notes.append(f"{PARAMS}: not evaluated: no cost_params given")
        else:
            prices[PARAMS] = c_n

    def loss(N, f, p, params=post):
        return q.law_loss(fit, params, N, f, p if law.pretrain_axis else None)

    def point(spend):
        """(N, f, p) after spending the dict `spend` (resource -> amount)."""
        return (start["n_params"] + spend.get(PARAMS, 0.0) / (c_n or 1.0),
                start["data_tokens"] + spend.get(FINETUNE, 0.0) / c_f,
                start["pretrain_tokens"] + spend.get(PRETRAIN, 0.0) / (c_p or 1.0))

    plans = {f"all on {name}": {name: budget} for name in prices}
    resources = list(prices)
    optimal_share, split, surface, chosen = None, None, None, None
    point_plan = None  # (name, spend) of the point-estimate choice when no candidate plan is it
    # medians: the mean of a heavy-tailed natural-scale parameter (N_c, k) is no point of the posterior
    median_params = post.median(q.SAMPLE_DIMS)

    def split_plan(share, kind):
        """A split on the budget line; the end points are the all-on plans."""
        if share <= 0 or share >= 1:
            return f"all on {resources[int(share >= 1)]}", None
        return (f"split ({kind}): {1 - share:.1%} {resources[0]}, {share:.1%} {resources[1]}",
                {resources[0]: budget * (1 - share), resources[1]: budget * share})

    if len(resources) == 2:
        a, b = resources
        shares = xr.DataArray(SHARES, dims="share", coords={"share": SHARES})
        N, f, p = point({a: budget * (1 - shares), b: budget * shares})
        surface = loss(N, f, p)  # (chain, draw, share)
        bayes_share = float(SHARES[int(np.nanargmin(surface.mean(q.SAMPLE_DIMS).values))])
        point_share = float(SHARES[int(np.nanargmin(loss(N, f, p, median_params).values))])
        if law.pretrain_axis:
            optimal_share = _gap_optimal_share(post, start, budget, c_p, c_f, surface)
        else:
            optimal_share = surface.idxmin("share")
        optimal_share = optimal_share.rename("optimal_share")
        split, chosen = (a, b), (bayes_share, point_share)
        name, spend = split_plan(bayes_share, "Bayes")
        if spend is not None:
            plans[name] = spend
        if point_share != bayes_share:
            point_plan = split_plan(point_share, "point estimate")
        point_choice = name if point_share == bayes_share else point_plan[0]
    else:
        point_choice = None

    n_candidates = len(plans)
    if point_plan is not None and point_plan[1] is not None:
        plans[point_plan[0]] = point_plan[1]
    draws = {name: loss(*point(spend)).transpose(*q.SAMPLE_DIMS).values.ravel() for name, spend in plans.items()}
    stacked = np.vstack(list(draws.values())[:n_candidates])
    best_draw = np.nanmin(stacked, axis=0)
    winner = np.nanargmin(stacked, axis=0)
    ranges = q.grid_ranges(fit, pair, finetuned=law.finetuned)
    rows = []
    for i, (name, spend) in enumerate(plans.items()):
        N, f, p = point(spend)
        values = draws[name]
        rows.append({
            "plan": name,
            "spend_finetune": spend.get(FINETUNE, 0.0), "spend_pretrain": spend.get(PRETRAIN, 0.0),
            "spend_params": spend.get(PARAMS, 0.0),
            "n_params": np.nan if law.pretrain_axis else N, "data_tokens": f,
            "pretrain_tokens": p if law.pretrain_axis else np.nan,
            "expected_loss": float(np.nanmean(values)),
            "loss_lower": float(np.nanquantile(values, (1 - prob) / 2)),
            "loss_upper": float(np.nanquantile(values, (1 + prob) / 2)),
            "p_best": float(np.mean(winner == i)) if i < n_candidates else np.nan,
            "expected_regret": float(np.nanmean(values - best_draw)),
            "extrapolated": _outside(ranges, N=None if law.pretrain_axis else N, D_F=f,
                                     p=p if law.pretrain_axis else None),
        })
    table = pd.DataFrame(rows)
    candidates = table.iloc[:n_candidates]
    best = str(candidates.loc[candidates["expected_loss"].idxmin(), "plan"])
    point_choice = point_choice or best
    expected = table.set_index("plan")["expected_loss"]
    regret = float(expected[point_choice] - expected[best])
    table["note"] = [", ".join(filter(None, ["Bayes choice" if n == best else "",
                                             "point-estimate choice" if n == point_choice else "",
                                             "" if i < n_candidates else "for comparison"]))
                     for i, n in enumerate(table["plan"])]
    formula = law.formula + (f"; scratch law {form}: {laws.scratch(form).formula}" if law.kind == "transfer" else "")
    data_unit, loss_unit = fit.grid.data_label, fit.grid.loss_unit
    held = {"transfer": f"pre-training data (at the grid's amount, {start['pretrain_tokens']:.3g} {data_unit})",
            "gap": f"model size (N = {start['n_params']:.3g}, the grid's)",
            "finetune": f"the pre-trained model (N = {start['n_params']:.3g})"}.get(law.kind, "nothing else")
    chains, n_draws = (post.sizes[d] for d in q.SAMPLE_DIMS)
    assumptions = {
        "budget": f"{budget:g} {currency}, spent on top of what is already done (sunk costs excluded)",
        "cost_finetune": f"{c_f:g} {currency} per fine-tuning token (data counted in {data_unit})",
        "cost_pretrain": ("not given" if c_p is None else
                          f"{c_p:g} {currency} per pre-training token (data counted in {data_unit})"),
        "cost_params": ("not given" if c_n is None else
                        f"{c_n:g} {currency} per parameter added (the whole cost of training a model one "
                        "parameter larger at the current data: " + (flops_note or "as given") + ")"),
        "current": (f"N = {start['n_params']:.3g} parameters, D_F = {start['data_tokens']:.3g} {data_unit}, "
                    f"p = {start['pretrain_tokens']:.3g} {data_unit}"),
        "law": f"{fit.law}: {formula}" + (f"; pair {pair}" if pair else ""),
        "held fixed": held,
        "loss": f"early-stopped validation loss on the target, {loss_unit}; lower is better",
        "posterior": f"{chains} chains x {n_draws} draws; point estimates are posterior medians",
    }
    return Recommendation(table=table, best=best, assumptions=assumptions,
                          point_estimate_choice=point_choice, regret_of_point_estimate=regret,
                          optimal_share=optimal_share, split_resources=split, surface=surface,
                          shares=chosen, prob=prob, notes=notes, units=(data_unit, loss_unit))


def _gap_optimal_share(post, start, budget, c_p, c_f, surface) -> xr.DataArray:
    """Per-draw optimal share of the budget on pre-training, from the closed form.

    From p = 0 the law jumps (scratch branch C_0), so the all-fine-tuning end is
    compared explicitly with the interior optimum.
    """
    p0, f0 = start["pretrain_tokens"], start["data_tokens"]
    C = c_p * p0 + c_f * f0 + budget
    p, _ = gap_optimal_pretrain(C, c_p, c_f, post["A_p"].values, post["alpha_p"].values,
                                post["G"].values, post["alpha_f"].values,
                                p_min=p0, p_max=p0 + budget / c_p)
    share = np.clip((p - p0) * c_p / budget, 0.0, 1.0)
    if p0 == 0:
        interior = surface.isel(share=slice(1, None)).min("share").values
        share = np.where(surface.isel(share=0).values <= interior, 0.0, share)
    return xr.DataArray(share, dims=post["A_p"].dims, coords={d: post[d] for d in post["A_p"].dims})


def _outside(ranges, **point) -> bool:
    for name, value in point.items():
        lim = ranges.get(name)
        if value is None or lim is None:
            continue
        if value < lim[0] * (1 - 1e-9) or value > lim[1] * (1 + 1e-9):
            return True
    return False
