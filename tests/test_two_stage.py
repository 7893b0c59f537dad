"""The paper's two-stage procedure recovers the transfer law from a simulated grid."""

import warnings

import numpy as np
import pytest

from bayes_transfer import two_stage
from bayes_transfer.models import design_grid, simulate_grid

SIZES, DATA = np.geomspace(1e5, 3e6, 4), np.geomspace(6e4, 3e7, 4)
KAPLAN = dict(N_c=1.5e6, D_c=1.5e6, alpha_N=0.15, alpha_D=0.3)
TEXT, CODE = ("text", "python"), ("code", "python")
TRANSFER = dict(KAPLAN, k={TEXT: 30.0, CODE: 3000.0}, alpha={TEXT: 0.3, CODE: 0.08}, beta=0.38, omega=0.0)


@pytest.fixture(scope="module")
def transfer_grid():
    design = design_grid(SIZES, DATA, sources=("text", "code"), target="python")
    return simulate_grid(design, "transfer", TRANSFER, sigma=0.01, seed=1)


def test_two_stage_recovers_the_transfer_law(transfer_grid):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ts = two_stage(transfer_grid, n_boot=200)
    assert set(ts.params.index) == {"text->python", "code->python"}
    assert len(ts.runs) == len(transfer_grid.finetuned) and {"D_E", "D_T", "used"} <= set(ts.runs.columns)
    for pair, key in (("text->python", TEXT), ("code->python", CODE)):
        row = ts.params.loc[pair]
        assert row["alpha"] == pytest.approx(TRANSFER["alpha"][key], abs=0.1)
        assert row["beta"] == pytest.approx(0.38, abs=0.1)
        assert row["alpha_5%"] < row["alpha"] < row["alpha_95%"]
