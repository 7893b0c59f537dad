"""The report: its content, its figures, its banners, and a real browser rendering it.

Fits here are real `Fit` objects whose posterior is drawn around known
parameters (no sampling), over grids simulated from those parameters.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import arviz as az
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from bayes_transfer import quantities as q
from bayes_transfer.fit import Fit
from bayes_transfer.grid import load_grid
from bayes_transfer.models import design_grid, simulate_losses
from bayes_transfer.fit import default_law
from bayes_transfer.report import report, worst_misfits
from test_quantities import GAP_TRUE, fake_fit

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import check_report  # noqa: E402

# Byte-level scale: losses between ~1 and ~2.7 nats/byte (the shipped CPU grid spans 1.6 to 2.9).
TRUE = dict(N_c=3e6, D_c=1.4e6, alpha_N=0.15, alpha_D=0.3, k=100.0, alpha=0.18, beta=0.38, omega=0.02)
SIZES, DATA = [1e5, 3e5, 1e6, 3e6], [6.4e4, 2.5e5, 1e6, 4e6, 1.6e7]


def transfer_table(seed=0):
    design = design_grid(SIZES, DATA, sources=("text",), target="python", pretrain_tokens=8e7)
    return simulate_losses(design, "transfer", TRUE, sigma=0.02, seed=seed)


def gap_table(seed=0):
    parts = [design_grid([1e6], DATA, sources=("text",), target="python", pretrain_tokens=p) for p in (1e6, 1e7, 1e8)]
    design = pd.concat(parts).drop_duplicates(["source", "data_tokens", "pretrain_tokens"]).reset_index(drop=True)
    return simulate_losses(design, "transfer_gap", GAP_TRUE, sigma=0.02, seed=seed)


def known_fit(law="transfer", chains=2, draws=300, stuck_chain=False, method="nuts"):
    """A Fit whose posterior is lognormal draws around the truth (a second chain off it if stuck)."""
    truth = TRUE if law == "transfer" else GAP_TRUE
    table = transfer_table() if law == "transfer" else gap_table()
    rng = np.random.default_rng(1)
    overrides = {}
    for name, value in truth.items():
        v = value * np.exp(0.03 * rng.standard_normal((chains, draws, 1)))
        if stuck_chain and name in ("k", "A_p"):
            v[1] *= 3.0
        overrides[name] = v
    post = fake_fit(law=law, chains=chains, n_draws=draws, overrides=overrides).posterior
    sigma = np.broadcast_to([0.02, 0.02], (chains, draws, 2))
    post = post.drop_vars("sigma").assign(sigma=(("chain", "draw", "kind"), sigma)).assign_coords(
        kind=["scratch", "pretrained" if law == "transfer_gap" else "finetuned"])
    grid = load_grid(table)
    # the prior: the same draws spread 0.5 in log (shares kept in (0, 1)), one chain, as a fit stores it
    prior = xr.Dataset({name: (da if float(da.max()) < 1 else da * np.exp(0.5 * rng.standard_normal(da.shape)))
                        .isel(chain=[0]) for name, da in post.data_vars.items()})
    # posterior predictive: each run's observed log loss with the fit's noise (sigma 0.02)
    log_loss = np.log(grid.runs["loss"].to_numpy()) + 0.02 * rng.standard_normal((chains, draws, len(grid)))
    predictive = xr.Dataset({"log_loss": (("chain", "draw", "run"), log_loss)},
                            coords={"run": grid.runs["run"].to_numpy()})
    idata = az.InferenceData(posterior=post, prior=prior, posterior_predictive=predictive, sample_stats=xr.Dataset(
        {"diverging": (("chain", "draw"), np.zeros((chains, draws), bool))}))
    sampler = ({"method": "map", "chains": 1, "draws": 1, "optimizer_success": True} if method == "map" else
               {"method": "nuts", "chains": chains, "draws": draws, "warmup": draws, "seconds": 1.0})
    log_N, log_D = np.log(grid.runs["n_params"]), np.log(grid.runs["data_tokens"])
    config = {"law": law, "scratch_law": "kaplan" if law == "transfer" else None,
              "centre": {"log_N0": float(log_N.mean()), "log_D0": float(log_D.mean()), "log_p0": 0.0}}
    return Fit(idata=idata, grid=grid, law=law, config=config, sampler=sampler)


@pytest.fixture(scope="module")
def transfer_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    return report(known_fit(), out)


def figures_of(index: Path) -> list[Path]:
    return sorted(index.parent.glob("fig_*.png"))


def test_report_has_every_section_and_figure(transfer_report):
    index = transfer_report
    page = index.read_text()
    for heading in ("The loss grid", "Fitted laws", "Effective data transferred (D_T vs D_F)",
                    "Effective data multiplier", "Parameters against published values", "Ossification map",
                    "Diagnostics", "Posterior predictive check", "Recommendation: where the next budget should go"):
        assert f">{heading}</h2>" in page, heading
    names = {p.name for p in figures_of(index)}
    assert {"fig_loss_grid.png", "fig_fitted_laws.png", "fig_transferred_data.png", "fig_multiplier.png",
            "fig_parameters.png", "fig_ossification.png", "fig_diagnostics.png", "fig_ppc.png"} <= names
    # every figure is embedded (self-contained, no network) and linked from the Markdown
    assert page.count('src="data:image/png;base64,') == len(names)
    assert not re.search(r'(src|href)="(https?:)?//', page)
    summary = (index.parent / "summary.md").read_text()
    for name in names:
        assert f"]({name})" in summary and (index.parent / name).stat().st_size > 5000
    assert "Converged." in page and "DID NOT CONVERGE" not in page


def test_report_numbers_are_the_fit_s(transfer_report):
    page = transfer_report.read_text()
    # published values beside the posterior, and the grid's units (this one counts tokens, not bytes)
    assert "Hernandez et al. 2021: English text -&gt; Python" in page
    assert "nats/token" in page and "E[loss] (nats/token)" in page and "D_F after (tokens)" in page
    assert "nats/byte" not in page
    # the recommendation under illustrative prices says so, with costs and assumptions
    assert "illustrative" in page and "Spend the budget on " in page
    assert "USD per fine-tuning token" in page and "held fixed" in page
    # the predictive check: simulated from the posterior's centre, most runs sit inside 90% intervals
    share = float(re.search(r"(\d+)% of 40 runs lie inside", page).group(1))
    assert share >= 75
    # the headline multiplier at the centre with how far it narrowed against its prior (spread 0.5 in log)
    fit = known_fit()
    driven = q.prior_driven(fit, q.effective_multiplier, *q.fit_centre(fit), pair=q.pairs(fit)[0])
    assert 0 < float(driven["width_ratio"]) < 0.5 and not bool(driven)
    row = re.search(r"<td>centre</td>(.*?)</tr>", page, re.S).group(1)
    assert f"<td>{float(driven['width_ratio']):.2f}</td>" in row


def test_unconverged_fit_is_announced_at_the_top(tmp_path):
    index = report(known_fit(stuck_chain=True), tmp_path)
    page = index.read_text()
    assert page.index("THE FIT DID NOT CONVERGE") < page.index("<h2>")
    summary = (tmp_path / "summary.md").read_text().splitlines()
    assert any("THE FIT DID NOT CONVERGE" in line for line in summary[:8])


def test_map_fit_says_it_has_no_uncertainty(tmp_path):
    index = report(known_fit(chains=1, draws=1, method="map"), tmp_path)
    page = index.read_text()
    assert "MAP point estimate." in page
    assert not (tmp_path / "fig_diagnostics.png").exists()


def test_transfer_gap_report(tmp_path):
    index = report(known_fit(law="transfer_gap"), tmp_path,
                   budget=100.0, cost_finetune=1e-4, cost_pretrain=1e-6, currency="EUR")
    page = index.read_text()
    names = {p.name for p in figures_of(index)}
    assert "fig_transferred_data.png" not in names and "fig_ossification.png" in names
    assert "0.0001 EUR per fine-tuning token" in page and "illustrative" not in page
    assert "split (Bayes)" in page and "pre-training data" in page
    # the headline: what pre-training is worth at each measured p and in the limit the gap sets
    fit = known_fit(law="transfer_gap")
    limit = q.band(q.gap_multiplier(fit, np.inf, pair=q.pairs(fit)[0]), 0.9)
    assert "p -&gt; infinity (the gap G)" in page and f"{float(limit['median']):.3g}" in page


def test_beta_sharing_is_compared_where_a_target_has_two_sources(tmp_path, monkeypatch):
    """The wiring: the section appears from two sources per target and shows the comparison
    (the comparison itself is tested, with real fits, in test_compare)."""
    from bayes_transfer import compare

    calls = []
    table = pd.DataFrame({"rank": [0, 1], "elpd_loo": [50.0, 41.0], "elpd_diff": [0.0, 9.0], "dse": [0.0, 3.0],
                          "weight": [0.97, 0.03], "warning": [False, False]}, index=["beta per source", "shared beta"])
    ok = known_fit()

    def fake_comparison(fit):
        calls.append(fit)
        return table, {"beta per source": ok, "shared beta": ok}

    monkeypatch.setattr(compare, "beta_sharing_of", fake_comparison)
    page = report(ok, tmp_path / "one").read_text()
    assert not calls and "Is beta shared between sources?" not in page  # one source: nothing to compare
    monkeypatch.setattr(compare, "sources_per_target", lambda grid: 2)
    page = report(ok, tmp_path / "two").read_text()
    assert len(calls) == 1 and calls[0].grid.sha256 == ok.grid.sha256 and ">Is beta shared between sources?</h2>" in page
    assert "The data prefer beta per source: " in page and "higher by 9.0 +- 3.0" in page
    assert report(ok, tmp_path / "off", beta_sharing=False).read_text().count("Is beta shared") == 0


def test_a_transfer_report_needs_finetuned_runs(tmp_path):
    scratch_only = transfer_table()
    scratch_only = scratch_only[scratch_only["source"] == "none"]
    with pytest.raises(ValueError, match="needs fine-tuned runs"):
        report(scratch_only, tmp_path, law="transfer")


def test_default_law_follows_the_grid():
    table = transfer_table()
    assert default_law(load_grid(table)) == "transfer"
    assert default_law(load_grid(table[table["source"] == "none"])) == "kaplan"
    assert default_law(load_grid(gap_table())) == "transfer_gap"


@pytest.mark.skipif(check_report.find_chromium() is None, reason="chromium is not installed")
def test_report_renders_in_chromium(transfer_report, tmp_path):
    png = check_report.screenshot(transfer_report, tmp_path / "shot.png", height=3000)
    assert not check_report.is_blank(png)
    import matplotlib.image as mpimg

    pixels = mpimg.imread(png)
    assert pixels.shape[:2] == (3000, 1280)
    # figures render: a good share of the page is neither white nor text-grey
    colourful = (pixels[..., :3].max(axis=-1) - pixels[..., :3].min(axis=-1)) > 0.2
    assert colourful.mean() > 0.01


def test_prior_sensitivity_section_when_asked(tmp_path, monkeypatch):
    from bayes_transfer import sensitivity

    ok = known_fit()
    calls = []
    table = pd.DataFrame({"quantity": ["alpha[text->python]"], "median": [0.18], "lower": [0.1], "upper": [0.3],
                          "wide median": [0.12], "wide lower": [0.02], "wide upper": [0.4],
                          "shift / width": [0.37], "width ratio": [2.73]})

    def fake(fit, prob):
        calls.append(fit)
        return table, ok

    monkeypatch.setattr(sensitivity, "prior_sensitivity", fake)
    assert ">Prior sensitivity</h2>" not in report(ok, tmp_path / "off").read_text() and not calls
    page = report(ok, tmp_path / "on", prior_sensitivity=True).read_text()
    assert len(calls) == 1 and ">Prior sensitivity</h2>" in page
    assert "0.18 [0.1, 0.3]" in page and "0.12 [0.02, 0.4]" in page and "2.73" in page
    # the headline table starts at the fit's centre
    summary = (tmp_path / "on" / "summary.md").read_text()
    assert "| text->python | centre |" in summary


def test_a_censored_run_above_its_prediction_is_no_misfit():
    ppc = pd.DataFrame({"loss": [2.0, 1.0, 1.0, 1.05], "median": [1.0, 2.0, 1.2, 1.0],
                        "censored": [True, True, False, False]})
    # the bound 2.0 over a prediction of 1.0 is consistent; a prediction of 2.0 over a bound of 1.0 is not
    assert list(worst_misfits(ppc, 3).index) == [1, 2, 3]
