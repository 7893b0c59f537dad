"""Figures of a grid, a fit and a recommendation (matplotlib).

Every function returns a `matplotlib.figure.Figure` (or None when the fit
has nothing to show for it), built without pyplot: it renders with Agg
whatever the session's backend, and a notebook shows it as a cell's value.
Sizes and data in the grid's units (bytes and nats/byte for the trainer's grids), log axes where the laws are
power laws; the palette, axes and extrapolation shading are
`figure_style.py`'s.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle

from loss_grid import SCRATCH, split_pair

from . import laws, published
from . import quantities as q
from .figure_style import (EXTRAP_PATCH, MARKERS, PALETTE, band_line, colour, fmt_n, legend_sizes, loss_axis,
                           outside_legend, panels, shade_outside, span, styled)


def _pair_runs(runs: pd.DataFrame, pair: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    source, target = split_pair(pair)
    tuned = runs[(runs["source"] == source) & (runs["target"] == target)]
    scratch = runs[(runs["source"] == SCRATCH) & (runs["target"] == target)]
    return scratch, tuned


# ---------------------------------------------------------------- the grid


@styled
def plot_loss_grid(grid) -> Figure:
    """Best validation loss against data, per model size: scratch solid, fine-tuned dashed."""
    runs = grid.runs
    targets = sorted(runs["target"].unique())
    fig, axes = panels(len(targets))
    sizes = sorted(runs["n_params"].unique())
    for ax, target in zip(axes, targets):
        rows = runs[runs["target"] == target]
        sources = [SCRATCH] + sorted(s for s in rows["source"].unique() if s != SCRATCH)
        for si, source in enumerate(sources):
            for ni, n in enumerate(sizes):
                r = rows[(rows["source"] == source) & (rows["n_params"] == n)]
                if r.empty:
                    continue
                mean = r.groupby(["data_tokens", "pretrain_tokens"])["loss"].mean().reset_index()
                for _, by_p in mean.groupby("pretrain_tokens"):
                    ax.plot(by_p["data_tokens"], by_p["loss"], color=colour(ni), marker=MARKERS[si % 8],
                            ms=4, lw=1.2, ls="-" if source == SCRATCH else "--")
                ax.scatter(r["data_tokens"], r["loss"], color=colour(ni), marker=MARKERS[si % 8], s=10, alpha=0.5)
        ax.set(xscale="log", yscale="log", xlabel="data: D (scratch) or D_F (fine-tuned), bytes",
               ylabel=f"best validation loss ({grid.loss_unit})", title=f"target: {target}")
        style = [Line2D([], [], color="0.3", marker=MARKERS[i % 8], ls="-" if s == SCRATCH else "--",
                        label="from scratch" if s == SCRATCH else f"pre-trained on {s}")
                 for i, s in enumerate(sources)]
        loss_axis(ax)
        legend_sizes(ax, sizes, style)
    fig.suptitle("The loss grid: every run's early-stopped loss")
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- fitted laws


@styled
def plot_fitted_laws(fit, prob: float = 0.9) -> Figure:
    """The data with the fitted law's median and credible band, per pair (or target)."""
    runs = q.fit_runs(fit)
    law = laws.of(fit)
    if law.pretrain_axis:
        return _plot_gap_laws(fit, prob)
    if not law.has_scratch:
        return _plot_curves(fit, prob)
    groups = q.pairs(fit) if law.finetuned else [str(t) for t in fit.posterior["target"].values]
    fig, axes = panels(len(groups))
    for ax, group in zip(axes, groups):
        if law.finetuned:
            scratch, tuned = _pair_runs(runs, group)
        else:
            scratch, tuned = runs[(runs["source"] == SCRATCH) & (runs["target"] == group)], runs.iloc[:0]
        both = pd.concat([scratch, tuned])
        sizes = sorted(both["n_params"].unique())
        lo, hi = both["data_tokens"].min(), both["data_tokens"].max()
        x = span(lo, hi)
        for ni, n in enumerate(sizes):
            c = colour(ni)
            kw = dict(pair=group) if law.finetuned else dict(target=group)
            if law.finetuned:
                s_loss = q.predicted_loss(fit, n, x, p=0, **kw)
                t_loss = q.predicted_loss(fit, n, x, **kw)
                band_line(ax, x, q.band(t_loss, prob), c, inside=~t_loss["extrapolated"].values)
                band_line(ax, x, q.band(s_loss, prob), c, inside=~s_loss["extrapolated"].values)
                ax.scatter(tuned.loc[tuned.n_params == n, "data_tokens"], tuned.loc[tuned.n_params == n, "loss"],
                           color=c, marker="^", s=22, zorder=3, edgecolor="white", linewidth=0.5)
            else:
                s_loss = q.predicted_loss(fit, n, x, **kw)
                band_line(ax, x, q.band(s_loss, prob), c, inside=~s_loss["extrapolated"].values)
            ax.scatter(scratch.loc[scratch.n_params == n, "data_tokens"], scratch.loc[scratch.n_params == n, "loss"],
                       color=c, marker="o", s=22, zorder=3, edgecolor="white", linewidth=0.5)
        shade_outside(ax, lo, hi, x[0], x[-1])
        ax.set(xscale="log", yscale="log", xlabel=f"data: D or D_F ({fit.grid.data_label})",
               ylabel=f"loss ({fit.grid.loss_unit})",
               title=f"{fit.law}: {group}")
        extra = [Line2D([], [], color="0.3", marker="o", ls="", label="from scratch (data)")]
        if law.finetuned:
            extra.append(Line2D([], [], color="0.3", marker="^", ls="", label="fine-tuned (data)"))
        extra += [Patch(facecolor="0.5", alpha=0.3, label=f"{prob:.0%} credible band"), EXTRAP_PATCH]
        loss_axis(ax)
        legend_sizes(ax, sizes, extra)
    fig.suptitle("Fitted laws over the data (median, band; dashed = extrapolated)")
    fig.tight_layout()
    return fig


def _plot_curves(fit, prob: float, most: int = 8) -> Figure:
    """Fine-tuning curves: one panel per target, one curve per pre-trained model (the
    ``most`` with the most runs, so a panel stays readable)."""
    runs = q.fit_runs(fit)
    pairs = q.pairs(fit)
    targets = sorted({split_pair(p)[1] for p in pairs})
    fig, axes = panels(len(targets))
    for ax, target in zip(axes, targets):
        mine = [p for p in pairs if split_pair(p)[1] == target]
        counts = {p: int((runs["source"] == split_pair(p)[0]).sum()) for p in mine}
        shown = sorted(mine, key=lambda p: -counts[p])[:most]
        rows = runs[runs["target"] == target]
        lo, hi = rows["data_tokens"].min(), rows["data_tokens"].max()
        x = span(lo, hi)
        for i, pair in enumerate(shown):
            c, source = colour(i), split_pair(pair)[0]
            loss = q.predicted_loss(fit, None, x, pair=pair)
            band_line(ax, x, q.band(loss, prob), c, inside=~loss["extrapolated"].values, label=source)
            mine_rows = rows[rows["source"] == source]
            ax.scatter(mine_rows["data_tokens"], mine_rows["loss"], color=c, s=18, zorder=3, edgecolor="white",
                       linewidth=0.5)
        shade_outside(ax, lo, hi, x[0], x[-1])
        more = f" ({len(shown)} of {len(mine)} models)" if len(shown) < len(mine) else ""
        ax.set(xscale="log", yscale="log", xlabel="fine-tuning data D_F", ylabel="loss", title=f"{target}{more}")
        loss_axis(ax)
        handles, _ = ax.get_legend_handles_labels()
        outside_legend(ax, handles + [EXTRAP_PATCH])
    fig.suptitle(f"Fine-tuning curves ({fit.law}): median and {prob:.0%} band per pre-trained model")
    fig.tight_layout()
    return fig


def _plot_gap_laws(fit, prob: float) -> Figure:
    runs = q.fit_runs(fit)
    groups = q.pairs(fit)
    fig, axes = panels(len(groups))
    for ax, pair in zip(axes, groups):
        scratch, tuned = _pair_runs(runs, pair)
        both = pd.concat([scratch, tuned])
        lo, hi = both["data_tokens"].min(), both["data_tokens"].max()
        x = span(lo, hi)
        levels = [0.0] + sorted(tuned["pretrain_tokens"].unique())
        for i, p in enumerate(levels):
            c = colour(i)
            loss = q.predicted_loss(fit, None, x, p=p, pair=pair)
            band_line(ax, x, q.band(loss, prob), c, inside=~loss["extrapolated"].values,
                       label="from scratch" if p == 0 else f"p = {fmt_n(p)} {fit.grid.data_label}")
            rows = scratch if p == 0 else tuned[tuned["pretrain_tokens"] == p]
            ax.scatter(rows["data_tokens"], rows["loss"], color=c, marker=MARKERS[i % 8], s=22, zorder=3,
                       edgecolor="white", linewidth=0.5)
        shade_outside(ax, lo, hi, x[0], x[-1])
        ax.set(xscale="log", yscale="log", xlabel=f"fine-tuning data f ({fit.grid.data_label})",
               ylabel=f"loss ({fit.grid.loss_unit})",
               title=f"transfer gap: {pair}")
        loss_axis(ax)
        handles, _ = ax.get_legend_handles_labels()
        outside_legend(ax, handles + [EXTRAP_PATCH])
    fig.suptitle("Transfer-gap law over the data, per pre-training amount p")
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- D_T and multiplier


@styled
def plot_transferred_data(fit, prob: float = 0.9) -> Figure | None:
    """Hernandez et al.'s key figure: D_T against D_F per model size, log-log.

    Points: each fine-tuned run inverted through the scratch law (two-stage, with
    the scratch posterior's interval as error bars). Lines and bands: the jointly
    fitted law. Runs whose D_T is not positive (ossified) or unbounded sit on
    the bottom edge as open triangles.
    """
    if laws.of(fit).kind != "transfer":
        return None
    points = q.observed_transferred_data(fit, prob)
    groups = q.pairs(fit)
    fig, axes = panels(len(groups))
    for ax, pair in zip(axes, groups):
        pts = points[points["pair"] == pair]
        sizes = sorted(pts["n_params"].unique())
        lo, hi = pts["data_tokens"].min(), pts["data_tokens"].max()
        x = span(lo, hi)
        bottom, bad = np.inf, []
        for ni, n in enumerate(sizes):
            c = colour(ni)
            d_t = q.transferred_data(fit, n, x, pair=pair)
            b = q.band(d_t, prob)
            band_line(ax, x, b, c, inside=~d_t["extrapolated"].values, alpha=0.1)
            r = pts[pts["n_params"] == n]
            good = (r["D_T_median"] > 0) & (r["share_unbounded"] < 0.5)
            med = r.loc[good, "D_T_median"]
            yerr = np.vstack([med - r.loc[good, "D_T_lower"].clip(lower=med * 1e-3),
                              r.loc[good, "D_T_upper"] - med])
            ax.errorbar(r.loc[good, "data_tokens"], med, yerr=yerr, fmt="o", color=c, ms=5, capsize=2,
                        mec="white", mew=0.5, zorder=3)
            positive = np.asarray(b["median"])[np.asarray(b["median"]) > 0]
            bottom = min(bottom, positive.min() if positive.size else np.inf, med.min() if len(med) else np.inf)
            bad.append((r.loc[~good, "data_tokens"].to_numpy(), c))
        ax.set(xscale="log", yscale="log")
        if np.isfinite(bottom):
            ax.set_ylim(bottom=bottom / 3)
        for xs, c in bad:  # on the bottom edge: no place on a log axis
            ax.scatter(xs, np.full(len(xs), ax.get_ylim()[0] * 1.15), marker="v", facecolor="none",
                       edgecolor=c, s=40, zorder=4, clip_on=False)
        shade_outside(ax, lo, hi, x[0], x[-1])
        ax.set(xlabel=f"fine-tuning data D_F ({fit.grid.data_label})", ylabel=f"data transferred D_T ({fit.grid.data_label})",
               title=f"D_T vs D_F: {pair}")
        extra = [Line2D([], [], color="0.3", marker="o", ls="", label="two-stage points (interval)"),
                 Line2D([], [], color="0.3", marker="v", mfc="none", ls="", label="D_T <= 0 or unbounded"),
                 Patch(facecolor="0.5", alpha=0.3, label=f"joint fit, {prob:.0%} band"), EXTRAP_PATCH]
        legend_sizes(ax, sizes, extra)
    fig.suptitle("Effective data transferred by pre-training, D_T = k D_F^alpha N^beta - omega D_F")
    fig.tight_layout()
    return fig


@styled
def plot_multiplier(fit, prob: float = 0.9) -> Figure | None:
    """The effective-data multiplier (D_F + D_T) / D_F against D_F, per model size."""
    if laws.of(fit).kind != "transfer":
        return None
    runs = q.fit_runs(fit)
    groups = q.pairs(fit)
    fig, axes = panels(len(groups))
    for ax, pair in zip(axes, groups):
        _, tuned = _pair_runs(runs, pair)
        sizes = sorted(tuned["n_params"].unique())
        lo, hi = tuned["data_tokens"].min(), tuned["data_tokens"].max()
        x = span(lo, hi)
        for ni, n in enumerate(sizes):
            m = q.effective_multiplier(fit, n, x, pair=pair)
            band_line(ax, x, q.band(m, prob), colour(ni), inside=~m["extrapolated"].values)
        ax.axhline(1.0, color="0.3", lw=0.8, ls=":")
        ax.text(x[0], 1.0, " no transfer", va="bottom", fontsize=8, color="0.3")
        shade_outside(ax, lo, hi, x[0], x[-1])
        ax.set(xscale="log", yscale="log", xlabel=f"fine-tuning data D_F ({fit.grid.data_label})",
               ylabel="effective data multiplier (D_F + D_T) / D_F", title=f"multiplier: {pair}")
        loss_axis(ax)
        legend_sizes(ax, sizes, [Patch(facecolor="0.5", alpha=0.3, label=f"{prob:.0%} band"), EXTRAP_PATCH])
    fig.suptitle("How many times its fine-tuning data pre-training is worth")
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- parameters


@styled
def plot_parameters(fit, prob: float = 0.9) -> Figure:
    """Each parameter's posterior median and interval per group, against published values."""
    table = published.compare(fit, prob)
    names = list(dict.fromkeys(table["parameter"]))
    fig, axes = panels(len(names), width=4.2, height=0.6 + 0.45 * max(table.groupby("parameter").size().max(), 2))
    for ax, name in zip(axes, names):
        rows = table[table["parameter"] == name].reset_index(drop=True)
        y = np.arange(len(rows))
        ax.hlines(y, rows["lower"], rows["upper"], color=PALETTE[0], lw=2.5)
        ax.plot(rows["median"], y, "o", color=PALETTE[0])
        has_pub = rows["published"].notna()
        if has_pub.any():
            ax.plot(rows.loc[has_pub, "published"], y[has_pub], "D", color=PALETTE[1], mfc="none", ms=8, mew=1.5)
        ax.set_yticks(y, [g + (" (prior-driven)" if pd_ else "") for g, pd_ in zip(rows["group"], rows["prior_driven"])])
        ax.set_ylim(-0.7, len(rows) - 0.3)
        ax.set_title(name)
        values = pd.concat([rows["lower"], rows["upper"], rows["published"]]).dropna()
        if values.min() > 0 and values.max() / values.min() > 20:
            ax.set_xscale("log")
        else:
            ax.ticklabel_format(axis="x", style="sci", scilimits=(-3, 4))
    handles = [Line2D([], [], color=PALETTE[0], marker="o", lw=2.5, label=f"posterior median, {prob:.0%} interval")]
    if table["published"].notna().any():
        handles.append(Line2D([], [], color=PALETTE[1], marker="D", mfc="none", ls="", ms=8,
                              label="published (docs/published.md)"))
    fig.suptitle("Fitted parameters against the published values (units differ: see the table)")
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.legend(handles=handles, loc="lower center", ncol=2, fontsize=9, frameon=False)
    return fig


# ---------------------------------------------------------------- ossification


@styled
def plot_ossification_map(fit, n_grid: int = 40) -> Figure | None:
    """P(pre-training worse than scratch) over N x D_F (transfer) or p x f (transfer gap)."""
    law = laws.of(fit)
    if not (law.finetuned and law.has_scratch):
        return None
    runs = q.fit_runs(fit)
    groups = q.pairs(fit)
    fig, axes = panels(len(groups), width=5.4, height=4.2)
    for ax, pair in zip(axes, groups):
        _, tuned = _pair_runs(runs, pair)
        d = span(tuned["data_tokens"].min(), tuned["data_tokens"].max(), 1.0, n_grid)
        if not law.pretrain_axis:
            other = span(tuned["n_params"].min(), tuned["n_params"].max(), 1.0, n_grid)
            prob = q.ossification_probability(fit, other, d, pair=pair).transpose("N", "D_F").values
            y_name, y_col = "model size N (parameters)", "n_params"
        else:
            other = span(tuned["pretrain_tokens"].min(), tuned["pretrain_tokens"].max(), 1.0, n_grid)
            prob = q.ossification_probability(fit, None, d, pair=pair, p=other).transpose("D_F", "p").values.T
            y_name, y_col = f"pre-training data p ({fit.grid.data_label})", "pretrain_tokens"
        mesh = ax.pcolormesh(d, other, prob, cmap="cividis", vmin=0, vmax=1, shading="nearest")
        if prob.min() < 0.5 < prob.max():
            ax.contour(d, other, prob, levels=[0.5], colors="white", linewidths=1.5)
        x0, x1 = tuned["data_tokens"].min(), tuned["data_tokens"].max()
        y0, y1 = tuned[y_col].min(), tuned[y_col].max()
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec=PALETTE[4], lw=2, ls="--"))
        ax.scatter(tuned["data_tokens"], tuned[y_col], s=8, color=PALETTE[4], zorder=3)
        handles = [Line2D([], [], color=PALETTE[4], ls="--", lw=2, label="measured grid (outside: extrapolated)"),
                   Line2D([], [], color="white", lw=1.5, label="P = 0.5")]
        if not law.pretrain_axis:
            boundary = q.low_data_boundary(fit, other, target=split_pair(pair)[1])
            ax.plot(boundary.median(q.SAMPLE_DIMS), other, color=PALETTE[5], lw=1.5, ls=":")
            handles.append(Line2D([], [], color=PALETTE[5], ls=":", label="low-data boundary 0.1 D(N)"))
        ax.set(xscale="log", yscale="log", xlabel=f"fine-tuning data D_F ({fit.grid.data_label})", ylabel=y_name,
               title=f"ossification: {pair}", xlim=(d[0], d[-1]), ylim=(other[0], other[-1]))
        ax.legend(handles=handles, fontsize=7, loc="lower left", facecolor="0.4", labelcolor="white")
        fig.colorbar(mesh, ax=ax, label="P(pre-trained worse than scratch)")
    fig.suptitle("Ossification map: where pre-training hurts")
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- diagnostics and checks


@styled
def plot_diagnostics(fit, var_names=None) -> Figure | None:
    """Rank plots (ArviZ) of the law parameters: flat, overlapping histograms mean chains agree."""
    import arviz as az

    post = fit.posterior
    if post.sizes.get("chain", 1) < 2 or post.sizes.get("draw", 1) < 20:
        return None
    if var_names is None:
        law = {"transfer": ("k", "alpha", "beta", "omega"), "transfer_gap": ("A_p", "alpha_p", "G", "alpha_f"),
               }.get(fit.law, ())
        var_names = [v for v in law + ("alpha_N", "alpha_D", "sigma") if v in post]
    axes = az.plot_rank(fit.idata, var_names=var_names, kind="vlines",
                        colors=PALETTE[:post.sizes["chain"]] if post.sizes["chain"] <= 8 else None,
                        figsize=(12, 1.9 * int(np.ceil(_n_panels(post, var_names) / 4))), show=False,
                        backend_kwargs={"layout": "constrained"})
    for ax in np.atleast_1d(axes).ravel():
        ax.set_xlabel("rank (all chains)", fontsize=9)
        ax.title.set_fontsize(9)
    fig = np.atleast_1d(axes).ravel()[0].figure
    fig.suptitle("Rank plots per chain (uniform = well mixed)")
    return fig


def _n_panels(post, var_names) -> int:
    total = 0
    for v in var_names:
        extra = [post[v].sizes[d] for d in post[v].dims if d not in q.SAMPLE_DIMS]
        total += int(np.prod(extra)) if extra else 1
    return total


@styled
def plot_ppc(fit, prob: float = 0.9, table: pd.DataFrame | None = None) -> Figure:
    """Observed loss against the posterior predictive (median, interval) for every run."""
    table = q.posterior_predictive_table(fit, prob) if table is None else table
    fig = Figure(figsize=(6.2, 5.4))
    ax = fig.subplots()
    for i, (source, rows) in enumerate(table.groupby("source", sort=True)):
        label = "from scratch" if source == SCRATCH else f"pre-trained on {source}"
        ax.errorbar(rows["loss"], rows["median"],
                    yerr=[rows["median"] - rows["lower"], rows["upper"] - rows["median"]],
                    fmt=MARKERS[i % 8], color=colour(i), ms=4, capsize=2, alpha=0.85, label=label)
    lo = min(table["loss"].min(), table["lower"].min()) * 0.95
    hi = max(table["loss"].max(), table["upper"].max()) * 1.05
    ax.plot([lo, hi], [lo, hi], color="0.3", lw=0.8, ls=":", label="predicted = observed")
    coverage = table["inside"].mean()
    ax.set(xscale="log", yscale="log", xlim=(lo, hi), ylim=(lo, hi), xlabel=f"observed loss ({fit.grid.loss_unit})",
           ylabel=f"posterior predictive loss ({fit.grid.loss_unit}), {prob:.0%} interval",
           title=f"Posterior predictive check: {coverage:.0%} of {len(table)} runs inside their {prob:.0%} interval")
    ax.legend(fontsize=8, loc="upper left")
    loss_axis(ax, "x")
    loss_axis(ax, "y")
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- recommendation


@styled
def plot_allocation(rec) -> Figure | None:
    """Expected loss over budget splits, the Bayes and point-estimate choices, and the
    posterior of the optimal split."""
    if rec.surface is None:
        return None
    a, b = rec.split_resources
    shares = rec.surface["share"].values
    flat = rec.surface.stack(sample=q.SAMPLE_DIMS).transpose("share", "sample").values
    lo_q, hi_q = (1 - rec.prob) / 2, (1 + rec.prob) / 2
    fig = Figure(figsize=(11, 4.2))
    ax, ax2 = fig.subplots(1, 2)
    mean = np.nanmean(flat, axis=1)
    # loss relative to each draw's own value at the Bayes choice: the shared uncertainty cancels
    at_bayes = flat[np.argmin(np.abs(shares - rec.shares[0]))]
    rel = flat - at_bayes
    ax.fill_between(shares, np.nanquantile(rel, lo_q, axis=1), np.nanquantile(rel, hi_q, axis=1),
                    color=PALETTE[0], alpha=0.2, lw=0, label=f"{rec.prob:.0%} band over draws")
    ax.plot(shares, mean - mean[np.argmin(np.abs(shares - rec.shares[0]))], color=PALETTE[0], lw=1.8,
            label="expected loss")
    ax.axvline(rec.shares[0], color=PALETTE[1], lw=1.5, label=f"Bayes choice ({rec.shares[0]:.1%})")
    ax.axvline(rec.shares[1], color=PALETTE[2], lw=1.5, ls="--", label=f"point-estimate choice ({rec.shares[1]:.1%})")
    ax.axhline(0, color="0.3", lw=0.6)
    ax.set(xlabel=f"share of the budget spent on {b} (rest on {a})",
           ylabel=f"loss minus loss at the Bayes choice ({rec.units[1]})", title="Loss over budget splits")
    ax.legend(fontsize=8)
    ax2.hist(rec.optimal_share.values.ravel(), bins=np.linspace(0, 1, 41), color=PALETTE[0], alpha=0.8)
    ax2.set(xlabel=f"optimal share on {b}, per posterior draw", ylabel="posterior draws",
            title="Posterior of the optimal allocation")
    fig.tight_layout()
    return fig
