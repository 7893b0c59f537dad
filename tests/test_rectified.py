"""The rectified fine-tuning law (Lin et al. 2024): one curve per pre-trained model and dataset."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from bayes_transfer import fit, laws, recommend
from bayes_transfer import quantities as q
from bayes_transfer.identify import NotIdentifiedError
from bayes_transfer.models import simulate_grid

DATA = np.geomspace(200, 1.6e6, 9)
# far from anything published: a steep curve with almost nothing pre-learned, and a flat one
# that pre-training has mostly covered already
TRUTH = {"B": {("small-lm", "summaries"): 3000.0, ("big-lm", "summaries"): 10.0},
         "D_l": {("small-lm", "summaries"): 300.0, ("big-lm", "summaries"): 5.0},
         "beta": {("small-lm", "summaries"): 0.9, ("big-lm", "summaries"): 0.35},
         "E": {("small-lm", "summaries"): 1.2, ("big-lm", "summaries"): 0.6}}
SIZES = {"small-lm": 1.2e8, "big-lm": 7e9}


def design(data=DATA):
    return pd.DataFrame([dict(source=s, target="summaries", n_params=n, data_tokens=d, pretrain_tokens=1e11)
                         for s, n in SIZES.items() for d in data])


def test_centred_form_is_the_law_at_its_natural_parameters():
    rng = np.random.default_rng(0)
    s = {"L0": 2.0, "w": 0.65, "beta": 0.4, "r": 2.5}
    centre = SimpleNamespace(log_D0=np.log(5e4))
    nat = {k: float(v) for k, v in laws.RECTIFIED.natural({k: jnp.asarray(v) for k, v in s.items()}, centre).items()}
    nat.update(beta=s["beta"])  # sampled as itself
    assert nat["E"] == pytest.approx(0.7)
    D = np.exp(rng.uniform(np.log(100), np.log(1e7), 50))
    centred = np.exp(np.asarray(laws.log_rectified_centred(np.log(D) - centre.log_D0, s)))
    np.testing.assert_allclose(centred, laws.rectified(D, **nat), rtol=1e-12)
    # at the centre the loss is L0, its reducible part w L0; at D -> 0 the loss is B / D_l + E
    assert laws.rectified(np.exp(centre.log_D0), **nat) == pytest.approx(s["L0"])
    assert nat["B"] / (nat["D_l"] + np.exp(centre.log_D0) ** s["beta"]) == pytest.approx(s["w"] * s["L0"])
    assert laws.rectified(1e-30, **nat) == pytest.approx(nat["B"] / nat["D_l"] + nat["E"])


@pytest.fixture(scope="module")
def curves_fit():
    grid = simulate_grid(design(), "rectified", TRUTH, sigma=0.005, seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fit(grid, "rectified", chains=4, draws=1000, seed=0, progress=False)


def test_recovers_each_curve_far_from_published_values(curves_fit):
    assert curves_fit.converged, curves_fit.diagnostics()
    post = curves_fit.posterior
    for name in ("beta", "E"):
        for source in SIZES:
            draws = post[name].sel(pair=f"{source}->summaries").values.ravel()
            lo, hi = np.quantile(draws, [0.01, 0.99])  # four checks: 98% intervals keep false alarms rare
            assert lo <= TRUTH[name][(source, "summaries")] <= hi, (name, source, lo, hi)
    # the curves, not only the parameters: within 2% (four times the noise of one run) everywhere
    for source in SIZES:
        pred = q.band(q.predicted_loss(curves_fit, None, DATA, pair=f"{source}->summaries"))["median"].values
        true = laws.rectified(DATA, *(TRUTH[k][(source, "summaries")] for k in ("B", "D_l", "beta", "E")))
        np.testing.assert_allclose(pred, true, rtol=0.02)


def test_the_answers_say_what_a_curve_cannot_tell(curves_fit):
    with pytest.raises(ValueError, match="no from-scratch or pre-training-size dependence"):
        q.predicted_loss(curves_fit, None, 1e4, p=0, pair="big-lm->summaries")
    with pytest.raises(ValueError, match="needs a 'transfer' fit"):
        q.transferred_data(curves_fit, 7e9, 1e4, pair="big-lm->summaries")
    rec = recommend(curves_fit.accept_unconverged(), budget=1.0, cost_finetune=1e-6, cost_params=1e-9,
                    pair="small-lm->summaries")
    assert rec.best == "all on fine-tuning data"
    assert any("holds its pre-trained model fixed" in n for n in rec.notes)
    assert "the pre-trained model (N = 1.2e+08)" in rec.assumptions["held fixed"]


def test_a_curve_needs_three_data_amounts():
    grid = simulate_grid(design(DATA[:2]), "rectified", TRUTH, sigma=0.005)
    with pytest.raises(NotIdentifiedError, match="pair 'big-lm->summaries' cannot be identified from 2 D_F"):
        fit(grid, "rectified", chains=1, draws=10, warmup=10, progress=False)


def test_the_curves_are_drawn_one_panel_per_dataset(curves_fit):
    from bayes_transfer import plots

    fig = plots.plot_fitted_laws(curves_fit)
    visible = [ax for ax in fig.axes if ax.get_visible() and ax.get_title()]
    assert [ax.get_title() for ax in visible] == ["summaries"]
    assert len(visible[0].collections) >= 4  # a band and the points for each of the two models
    assert plots.plot_ossification_map(curves_fit) is None and plots.plot_transferred_data(curves_fit) is None
