"""A posterior report: one self-contained HTML page, its PNG figures and a Markdown summary.

`report(grid_or_fit, out_dir)` fits first when given a grid (or a path to
one), then writes `index.html` (figures embedded, no network needed),
`summary.md` (figures linked as the PNGs beside it) and `fig_*.png`. A fit
that did not converge is announced at the top of both, in words.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import os
import shutil
import warnings
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from loss_grid import SCRATCH, split_pair

from . import compare, laws, plots, published, sensitivity
from .atomic import atomic_write
from . import quantities as q
from .allocate import display_table, markdown_table, recommend
from .fit import default_law


def illustrative_costs(fit, pair=None) -> dict:
    """Prices that make doubling each resource from the current point cost the same.

    A neutral default for a report when the user gave no prices: the answer is then
    which doubling (of D_F, of N, or of p) is worth most. Budget = the current
    fine-tuning data's cost at 1e-5 per byte.
    """
    runs = q.fit_runs(fit)
    tuned = runs[runs["source"] != SCRATCH]
    if pair is not None:
        source, target = split_pair(pair)
        tuned = tuned[(tuned["source"] == source) & (tuned["target"] == target)]
    rows = tuned if len(tuned) else runs
    f0 = float(rows["data_tokens"].max())
    cost_finetune = 1e-5
    budget = cost_finetune * f0
    out = {"budget": budget, "cost_finetune": cost_finetune}
    if laws.of(fit).pretrain_axis:
        out["cost_pretrain"] = budget / float(rows["pretrain_tokens"].max())
    else:
        out["cost_params"] = budget / float(rows["n_params"].max())
    return out


# ---------------------------------------------------------------- writing


class _Page:
    """Collects sections as HTML and Markdown side by side."""

    def __init__(self, out: Path, units: str = ""):
        self.out, self.html, self.md, self.figures = out, [], [], []
        self.units = units  # stamped on every figure: what the loss and the data are measured in

    def heading(self, text: str, level: int = 2):
        self.html.append(f"<h{level}>{html.escape(text)}</h{level}>")
        self.md.append(f"{'#' * level} {text}\n")

    def para(self, text: str, css: str = ""):
        cls = f' class="{css}"' if css else ""
        self.html.append(f"<p{cls}>{html.escape(text)}</p>")
        self.md.append(f"{text}\n")

    def bullets(self, items):
        self.html.append("<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in items) + "</ul>")
        self.md.append("\n".join(f"- {i}" for i in items) + "\n")

    def banner(self, title: str, text: str, css: str):
        self.html.append(f'<div class="banner {css}"><strong>{html.escape(title)}</strong> {html.escape(text)}</div>')
        self.md.append(f"> **{title}** {text}\n")

    def table(self, df: pd.DataFrame):
        self.html.append(df.to_html(index=False, border=0, classes="tbl", na_rep="-", escape=True))
        self.md.append(markdown_table(df.fillna("-")) + "\n")

    def figure(self, name: str, fig, caption: str):
        if fig is None:
            return
        if self.units:
            fig.text(0.995, 0.002, self.units, ha="right", va="bottom", fontsize=7, color="#555")
        buf = io.BytesIO()
        fig.savefig(buf, format="png", bbox_inches="tight")
        plt.close(fig)
        data = buf.getvalue()
        path = self.out / f"fig_{name}.png"
        atomic_write(path, data)
        self.figures.append(path)
        b64 = base64.b64encode(data).decode("ascii")
        self.html.append(f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{b64}">'
                         f"<figcaption>{html.escape(caption)}</figcaption></figure>")
        self.md.append(f"![{caption}]({path.name})\n\n*{caption}*\n")


CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;max-width:1180px;margin:2em auto;
padding:0 1.2em;color:#1a1a1a;line-height:1.45}
h1{margin-bottom:.2em}h2{border-bottom:2px solid #0072B2;padding-bottom:.2em;margin-top:2em}
.meta{color:#555;font-size:.92em}
.banner{padding:.9em 1.1em;border-radius:6px;margin:1em 0;font-size:1.05em}
.bad{background:#fde8e4;border:2px solid #D55E00}.warn{background:#fff4dc;border:2px solid #E69F00}
.good{background:#e5f4ee;border:2px solid #009E73}
figure{margin:1em 0}figure img{max-width:100%;height:auto;border:1px solid #ddd}
figcaption{color:#444;font-size:.9em}
table.tbl{border-collapse:collapse;font-size:.85em;margin:.6em 0}
table.tbl th,table.tbl td{border:1px solid #ccc;padding:.25em .5em;text-align:right}
table.tbl th{background:#eef3f8}table.tbl td:first-child,table.tbl th:first-child{text-align:left}
.answer{font-size:1.15em;font-weight:600}
"""


# ---------------------------------------------------------------- the report


def _load(grid_or_fit, law, fit_options):
    """A Fit from a Fit, a fit file, a Grid, a table or a grid file."""
    from .fit import Fit, fit, load_fit
    from .grid import load_grid

    if isinstance(grid_or_fit, Fit):
        return grid_or_fit
    if isinstance(grid_or_fit, (str, Path)) and is_fit_file(Path(grid_or_fit)):
        return load_fit(grid_or_fit)
    grid = load_grid(grid_or_fit, include_capped=True)  # capped runs enter the fit as bounds
    return fit(grid, law=law or default_law(grid), **(fit_options or {}))


def is_fit_file(path: Path) -> bool:
    """A netCDF fit file (posterior group) rather than a grid file."""
    if path.suffix not in (".nc", ".nc4", ".netcdf"):
        return False
    import h5netcdf

    try:
        with h5netcdf.File(path, "r") as f:
            return "posterior" in f.groups
    except OSError:
        return False


def report(grid_or_fit, out_dir, *, law: str | None = None, prob: float = 0.9, budget=None,
           cost_finetune=None, cost_pretrain=None, cost_params=None, current=None,
           currency: str = "USD", fit_options: dict | None = None, beta_sharing: bool = True,
           prior_sensitivity: bool = False) -> Path:
    """Write the report for a fit (or a grid, fitted first) into `out_dir`; returns index.html's path.

    Recommendations use the given prices; without them, `illustrative_costs` (said so in the report).
    ``beta_sharing``: where a target has two or more sources, refit with beta shared and per
    source and compare them (PSIS-LOO; two more fits). ``prior_sensitivity``: refit with
    every law prior twice as wide and show the headline numbers both ways (one more fit).
    The report is written into a temporary folder beside `out_dir` and swapped in whole: a report that
    fails part-way leaves an existing one untouched.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"report folder {out} exists and is not a folder")
    fit = _load(grid_or_fit, law, fit_options).accept_unconverged()  # non-convergence is announced at the top
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        _write_report(fit, tmp, prob, dict(budget=budget, cost_finetune=cost_finetune, cost_pretrain=cost_pretrain,
                                           cost_params=cost_params), current, currency, beta_sharing,
                      prior_sensitivity)
        _swap_in(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out / "index.html"


def _swap_in(new: Path, out: Path) -> None:
    """Replace folder `out` by `new`: two renames, so `out` is at every moment a whole report (or absent)."""
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.exists():
        os.replace(out, old)
    try:
        os.replace(new, out)
    except OSError:
        if old.exists():
            os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _write_report(fit, out: Path, prob, costs, current, currency, beta_sharing=True, prior_sensitivity=False) -> None:
    page = _Page(out, units_text(fit.grid))
    grid = fit.grid
    diag = fit.diagnostics()
    pairs = q.pairs(fit)

    page.heading("Scaling laws for transfer: posterior report", 1)
    page.para(f"{grid!r}. {units_text(grid)}.", css="meta")
    law = laws.of(fit)
    page.para(f"Law: {fit.law}" + (f" (scratch form {fit.config.get('scratch_law')})" if law.kind == "transfer" else "")
              + f"; sampler: {_sampler_text(fit)}; bayes_transfer {_version()}; written "
              f"{_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M} UTC.", css="meta")
    if fit.point_estimate:
        page.banner("MAP point estimate.", "No posterior uncertainty: bands collapse to lines and "
                    "probabilities to 0 or 1. Refit with NUTS for the answers with uncertainty.", "warn")
    elif not diag.converged:
        page.banner("THE FIT DID NOT CONVERGE: do not trust the numbers below.", str(diag), "bad")
    else:
        page.banner("Converged.", str(diag), "good")

    _headline(page, fit, prob)

    page.heading("The loss grid")
    page.figure("loss_grid", plots.plot_loss_grid(grid),
                "Early-stopped validation loss of every run: from scratch (solid) and fine-tuned (dashed), per model size.")
    if len(grid.excluded):
        page.para(f"{len(grid.excluded)} run(s) excluded by the loader (failed or flagged); see the grid file.")

    page.heading("Fitted laws")
    page.figure("fitted_laws", plots.plot_fitted_laws(fit, prob),
                f"The fitted law's median and {prob:.0%} credible band over the data; dashed and grey-shaded = extrapolated.")

    if law.kind == "transfer":
        page.heading("Effective data transferred (D_T vs D_F)")
        page.figure("transferred_data", plots.plot_transferred_data(fit, prob),
                    "D_T against D_F per model size, log-log (Hernandez et al. Fig. 1): points are the two-stage "
                    "inversion of each run, bands the joint fit.")
        page.heading("Effective data multiplier")
        page.figure("multiplier", plots.plot_multiplier(fit, prob),
                    "(D_F + D_T) / D_F: how many times its fine-tuning data pre-training is worth.")

    page.heading("Parameters against published values")
    table = published.compare(fit, prob)
    page.figure("parameters", plots.plot_parameters(fit, prob),
                f"Posterior median and {prob:.0%} interval per group; diamonds: published values (docs/published.md).")
    page.table(_format_params(table, prob))
    page.para("Published scratch-law values are for BPE tokens of web text, a sanity scale only; "
              "Hernandez et al.'s transfer fits are for characters of Python, comparable to bytes.")

    if prior_sensitivity and not fit.point_estimate:
        _prior_sensitivity(page, fit, prob)

    if law.finetuned and law.has_scratch:
        page.heading("Ossification map")
        page.figure("ossification", plots.plot_ossification_map(fit),
                    "Posterior probability that pre-training ends worse than training from scratch; "
                    "the dashed box is the measured grid, everything outside it extrapolation.")

    if beta_sharing and law.kind == "transfer" and not fit.point_estimate and compare.sources_per_target(grid) >= 2:
        _beta_sharing(page, fit)

    page.heading("Diagnostics")
    page.bullets(_diagnostic_lines(fit, diag))
    page.figure("diagnostics", plots.plot_diagnostics(fit),
                "Rank plots: each chain's ranks should be uniform; a chain whose bars lean is stuck.")

    page.heading("Posterior predictive check")
    ppc = q.posterior_predictive_table(fit, prob)
    page.figure("ppc", plots.plot_ppc(fit, prob, ppc),
                f"Each run's observed loss against its {prob:.0%} posterior-predictive interval (noise included).")
    worst = worst_misfits(ppc)
    bounds = f"; {int(ppc['censored'].sum())} censored runs count as inside when their interval reaches below " \
        "the recorded bound" if ppc["censored"].any() else ""
    page.para(f"{ppc['inside'].mean():.0%} of {len(ppc)} runs lie inside their {prob:.0%} predictive interval "
              f"(about {prob:.0%} expected{bounds}). Largest misfits:")
    page.table(worst[["source", "target", "n_params", "data_tokens", "loss", "censored", "median", "lower", "upper"]]
               .round(4).rename(columns={"median": "predicted median"}))

    page.heading("Recommendation: where the next budget should go")
    _recommendations(page, fit, pairs, prob, costs, current, currency)

    body = "\n".join(page.html)
    doc = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
           f'<meta name="viewport" content="width=device-width, initial-scale=1">'
           f"<title>bayes-transfer report</title><style>{CSS}</style></head><body>\n{body}\n</body></html>\n")
    atomic_write(out / "summary.md", "\n".join(page.md).encode())
    atomic_write(out / "index.html", doc.encode())


def worst_misfits(ppc: pd.DataFrame, n: int = 5) -> pd.DataFrame:
    """The ``n`` runs of a posterior predictive table farthest from their predicted median (log
    scale). A censored run's loss bounds its data-limited loss from above, so only a prediction
    above the bound counts against it."""
    z = np.log(ppc["loss"] / ppc["median"])
    return ppc.assign(z=np.where(ppc["censored"], np.maximum(-z, 0.0), np.abs(z))).nlargest(min(n, len(ppc)), "z")


def units_text(grid) -> str:
    """What the numbers of a grid (and of everything fitted to it) are measured in."""
    return f"Loss: {grid.loss_label}; data counted in {grid.data_label}"


def _version() -> str:
    import bayes_transfer

    return bayes_transfer.__version__


def _sampler_text(fit) -> str:
    s = fit.sampler
    if s.get("method") == "map":
        return "MAP (optimisation)"
    mass = f", {s['mass_matrix']} mass matrix" if "mass_matrix" in s else ""
    return (f"NUTS, {s.get('chains')} chains x {s.get('draws')} draws after {s.get('warmup')} warm-up{mass} "
            f"({s.get('seconds', '?')} s)")


def _width_text(driven) -> str:
    """A ``prior_driven`` result as its width ratio: '<=' where the prior overflowed, labelled if prior-driven."""
    return (("<= " if bool(driven["width_ratio_bound"]) else "") + f"{float(driven['width_ratio']):.2f}"
            + (" (prior-driven)" if bool(driven) else ""))


def _gap_headline(page: _Page, fit, prob: float) -> None:
    """Per pair: what pre-training is worth at each measured amount p and in the limit."""
    page.heading("Headline numbers")
    rows = []
    for pair in q.pairs(fit):
        source, target = split_pair(pair)
        runs = q.fit_runs(fit)
        amounts = sorted(set(runs.loc[(runs["source"] == source) & (runs["target"] == target), "pretrain_tokens"]))
        m = q.gap_multiplier(fit, [*amounts, np.inf], pair=pair)
        driven = q.prior_driven(fit, q.gap_multiplier, [*amounts, np.inf], pair=pair)
        b = q.band(m, prob)
        for p_val in m["p"].values:
            label = "p -> infinity (the gap G)" if np.isinf(p_val) else f"{p_val:.3g}"
            rows.append({"pair": pair, f"p ({fit.grid.data_label})": label,
                         "multiplier D_E / D_F": f"{float(b['median'].sel(p=p_val)):.3g}",
                         f"{prob:.0%} interval": f"{float(b['lower'].sel(p=p_val)):.3g} to "
                                                 f"{float(b['upper'].sel(p=p_val)):.3g}",
                         "posterior / prior width": _width_text(driven.sel(p=p_val))})
    page.para("How many times its fine-tuning data pre-training on p is worth: the data a from-scratch run "
              "needs to reach the fine-tuned run's loss, over D_F; the transfer-gap law makes it the same at "
              "every D_F. Its limit as p grows is set by the transfer gap G.")
    page.table(pd.DataFrame(rows))


def _headline(page: _Page, fit, prob: float) -> None:
    """A few numbers up front: D_T and the multiplier at the fit's centre and the grid's corners."""
    if laws.of(fit).kind == "gap":
        _gap_headline(page, fit, prob)
        return
    if laws.of(fit).kind != "transfer":
        return
    page.heading("Headline numbers")
    rows = []
    for pair in q.pairs(fit):
        runs = q.fit_runs(fit)
        source, target = split_pair(pair)
        tuned = runs[(runs["source"] == source) & (runs["target"] == target)]
        corners = [(n, d) for n in sorted({tuned["n_params"].min(), tuned["n_params"].max()})
                   for d in sorted({tuned["data_tokens"].min(), tuned["data_tokens"].max()})]
        for where, (n, d) in [("centre", q.fit_centre(fit))] + [("corner", c) for c in corners]:
            d_t = q.band(q.transferred_data(fit, n, d, pair=pair), prob)
            m = q.band(q.effective_multiplier(fit, n, d, pair=pair), prob)
            driven = q.prior_driven(fit, q.effective_multiplier, n, d, pair=pair)
            p_oss = float(q.ossification_probability(fit, n, d, pair=pair))
            by_prior = bool(q.ossification_prior_driven(fit, n, d, pair=pair))
            unit = fit.grid.data_label
            rows.append({"pair": pair, "where": where, "N": f"{n:.3g}", f"D_F ({unit})": f"{d:.3g}",
                         f"D_T median ({unit})": f"{float(d_t['median']):.3g}",
                         f"D_T {prob:.0%} interval": f"{float(d_t['lower']):.3g} to {float(d_t['upper']):.3g}",
                         "multiplier": f"{float(m['median']):.3g}",
                         f"multiplier {prob:.0%}": f"{float(m['lower']):.3g} to {float(m['upper']):.3g}",
                         "posterior / prior width": _width_text(driven),
                         "P(ossified)": f"{p_oss:.2f}" + (" (prior-driven)" if by_prior else "")})
    page.table(pd.DataFrame(rows))


def _format_params(table: pd.DataFrame, prob: float) -> pd.DataFrame:
    out = pd.DataFrame({"parameter": table["parameter"], "group": table["group"]})
    out["median"] = table["median"].map(lambda v: f"{v:.4g}")
    out[f"{prob:.0%} interval"] = [f"{a:.4g} to {b:.4g}" for a, b in zip(table["lower"], table["upper"])]
    out["posterior / prior width"] = [f"{r:.2f}" + (" prior-driven" if d else "")
                                      for r, d in zip(table["width_ratio"], table["prior_driven"])]
    out["published"] = table["published"].map(lambda v: "-" if np.isnan(v) else f"{v:.4g}")
    out["inside interval"] = [("-" if np.isnan(p) else ("yes" if lo <= p <= hi else "no"))
                              for p, lo, hi in zip(table["published"], table["lower"], table["upper"])]
    out["reference"] = table["reference"].replace("", "-")
    return out


def _diagnostic_lines(fit, diag) -> list[str]:
    if fit.point_estimate:
        return [str(diag)]
    post = fit.posterior
    lines = [f"max r_hat {diag.max_r_hat:.3f} (must be <= 1.01)",
             f"min bulk ESS {diag.min_ess_bulk:.0f} (must be >= 400)",
             f"divergent transitions: {diag.divergences}",
             f"{post.sizes['chain']} chains x {post.sizes['draw']} draws"]
    return lines + list(diag.messages) + fit.pooling_notes()


def _recommendations(page: _Page, fit, pairs, prob, costs, current, currency) -> None:
    given = {k: v for k, v in costs.items() if v is not None}
    targets = [str(t) for t in fit.posterior["target"].values] if "target" in fit.posterior.dims else [None]
    groups = pairs if pairs else targets
    for group in groups:
        kw = dict(pair=group) if pairs else dict(target=group)
        if given.get("cost_finetune") is None:
            prices = illustrative_costs(fit, group if pairs else None)
            prices.update(given)
            page.para("No prices were given, so these are illustrative: each resource is priced so that "
                      "doubling it from the current point costs the whole budget. The question answered is "
                      "then which doubling is worth most. Pass --budget and --cost-* to price your own.",
                      css="meta")
        else:
            prices = given
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            rec = recommend(fit, current=current, prob=prob, currency=currency, **prices, **kw)
        if group is not None:
            page.heading(f"{group}", 3)
        page.para(rec.answer(), css="answer")
        page.table(display_table(rec.table, prob, rec.units))
        page.para(" ".join(rec.findings()))
        if rec.optimal_share is not None:
            page.figure(f"allocation_{_slug(group)}", plots.plot_allocation(rec),
                        "Left: loss over budget splits relative to the Bayes choice. "
                        "Right: each posterior draw's optimal split.")
        page.bullets(rec.caveats())


def _beta_sharing(page: _Page, fit) -> None:
    page.heading("Is beta shared between sources?")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="fit of law .* did not converge")
        table, fits = compare.beta_sharing_of(fit)
    shown = table[["rank", "elpd_loo", "elpd_diff", "dse", "weight", "warning"]].reset_index(names="model")
    page.table(shown.round(2))
    page.para(compare.sharing_verdict(table, fits) + f" Both refitted with this fit's sampler settings; beta's "
              f"spread across sources is 0 (shared) or {compare.PER_SOURCE_SPREAD} on the log scale (per source).")


def _prior_sensitivity(page: _Page, fit, prob: float) -> None:
    law = laws.of(fit)
    page.heading("Prior sensitivity")
    table, wide = sensitivity.prior_sensitivity(fit, prob)
    lo, hi = f"{(1 - prob) / 2:.0%}", f"{(1 + prob) / 2:.0%}"

    def cell(m, a, b):
        return f"{m:.3g} [{a:.3g}, {b:.3g}]"

    page.table(pd.DataFrame({
        "quantity": table["quantity"],
        f"default priors: median [{lo}, {hi}]": [cell(*r) for r in table[["median", "lower", "upper"]].to_numpy()],
        f"priors {sensitivity.WIDEN:g}x as wide": [cell(*r) for r in
                                                  table[["wide median", "wide lower", "wide upper"]].to_numpy()],
        "median shift / interval width": table["shift / width"].round(2),
        "interval width ratio": table["width ratio"].round(2)}))
    note = "" if wide.converged else " The wider-prior fit did not converge; read its column as provisional."
    step = f" (target_accept {wide.sampler['target_accept']:g})" if "target_accept" in wide.sampler else ""
    page.para(f"Every prior on the law's parameters made {sensitivity.WIDEN:g} times as wide (log-sd of a "
              f"log-normal doubled, a Beta's concentration halved; noise and spread priors kept), refitted with "
              f"the same sampler settings but a finer step{step}. A number the data decided barely moves "
              f"(shift and width ratio near 0 and 1); one that moves by a good part of its interval, or whose interval widens with its prior, "
              f"rests on the prior. Widths on the log scale."
              + (" The multiplier is at the fit's centre, where its prior is set." if law.kind == "transfer" else "")
              + note)


def _slug(text) -> str:
    return "".join(c if c.isalnum() else "_" for c in str(text or "all"))


__all__ = ["report", "is_fit_file", "illustrative_costs"]
