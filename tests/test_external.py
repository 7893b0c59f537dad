"""Other labs' tables (data/external/, and two read from BT_EXTERNAL_DATA): loaded with their
declared units, the shipped grid.csv files in step with scripts/external_fits.py, and one fitted
end to end through the command line with its units carried into the fit file."""

from __future__ import annotations

import math
import sys
import warnings
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from bayes_transfer import GridError, load_grid

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import external_fits as ext  # noqa: E402

SHIPPED = {"epoch": "epoch2024_chinchilla", "muennighoff": "muennighoff2023_data_constrained",
           "porian": "porian2024_resolving_discrepancies", "gadre": "gadre2024_overtraining"}


def unshipped(key: str):
    d = ext.BY_KEY[key]
    if not d.available:
        pytest.skip(f"{d.folder} is not redistributed; set BT_EXTERNAL_DATA to the folder holding it "
                    f"(now: {ext.EXTERNAL_DATA or 'unset'})")
    return d


def quietly(x, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        grid = load_grid(x, **kwargs)
    return grid, [str(w.message) for w in caught]


@pytest.mark.parametrize("key", list(SHIPPED))
def test_shipped_grid_is_the_script_s_table(key):
    """grid.csv holds exactly what the fits use, its units declared in the file."""
    on_disk, _ = quietly(ext.SHIPPED / SHIPPED[key] / "grid.csv")
    in_memory, _ = quietly(ext.BY_KEY[key].table())
    assert on_disk.sha256 == in_memory.sha256 and on_disk.attrs["metric"] == "cross_entropy"
    assert on_disk.attrs["data_unit"] == "tokens" and on_disk.attrs["loss_units"] == "nats"


def test_row_counts_and_what_is_excluded():
    counts = {key: len(quietly(ext.BY_KEY[key].table())[0]) for key in SHIPPED}
    assert counts == {"epoch": 245, "muennighoff": 292, "porian": 121, "gadre": 104}
    grid, messages = quietly(ext.BY_KEY["muennighoff"].table())
    # the two diverged runs are excluded by name, not silently
    assert list(grid.excluded["run_name"]) == ["2b246b100m", "1b566b100m"]
    assert any("2 failed run(s) excluded" in m and "diverged" in m for m in messages)
    assert (grid.runs["tokens_seen"] >= grid.runs["data_tokens"]).all()


def test_another_lab_s_vocabulary_is_not_held_to_bytes():
    """The issue's example: Gadre et al.'s plain table (50k BPE tokens) was refused as 'above ln 256'."""
    raw = pd.read_csv(ext.SHIPPED / "gadre2024_overtraining" / "model_losses.csv")
    plain = raw[["n_params", "data_tokens", "loss", "target"]]
    assert plain["loss"].max() > math.log(256)
    # as given, three training sets share one target (the C4 evaluation): the collisions are named
    with pytest.raises(GridError, match=r"duplicated runs .* at run 0, run 1, .* and \d+ more"):
        load_grid(plain)
    plain = plain.assign(target=raw["dataset_name"])
    assert len(load_grid(plain)) == 104
    with pytest.raises(GridError, match=r"ln\(vocab_size\) = 5.545"):
        load_grid(plain, vocab_size=256)


def test_messy_tables_name_the_column_and_rows():
    """Porian et al.'s table mixes 15 configurations: fitted whole it has duplicated cells, named."""
    raw = pd.read_csv(ext.SHIPPED / "porian2024_resolving_discrepancies" / "isoflop_points.csv")
    with pytest.raises(GridError, match=r"duplicated runs .* at run \d+"):
        load_grid(raw[["n_params", "data_tokens", "loss"]])


def test_lin_counts_examples():
    grid, _ = quietly(ext.lin_table())
    assert len(grid) == 1260 and grid.data_label == "examples" and len(grid.sources) == 30
    assert grid.scratch.empty  # why no transfer law fits it, and the per-model rectified law does


def test_lin_curves_fit_with_the_rectified_law_in_examples():
    from bayes_transfer import fit
    from bayes_transfer import quantities as q

    table = ext.lin_table()
    two = table[table["source"].isin(["gpt2", "facebook/opt-1.3b"]) & (table["target"] == "flan")]
    grid, _ = quietly(ext._with(two, **table.attrs))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = fit(grid, "rectified", chains=2, draws=300, warmup=300, progress=False)
    assert result.grid.data_label == "examples" and result.grid.loss_label == "cross-entropy (nats/token)"
    assert sorted(q.pairs(result)) == ["facebook/opt-1.3b->flan", "gpt2->flan"]
    # the curve passes through the measured losses: within 5% at every fine-tuning size
    for source, runs in two.groupby("source"):
        pred = q.band(q.predicted_loss(result, None, runs["data_tokens"].to_numpy(), pair=f"{source}->flan",
                                       allow_unconverged=True))["median"].values
        assert abs(pred / runs["loss"].to_numpy() - 1).max() < 0.05, source
    lines = ext.lin_summary(grid, result)
    assert lines[2].startswith("| flan | 2 |")


def test_mikami_is_an_error_rate_over_images():
    d = unshipped("mikami")
    grid, _ = quietly(d.table())
    assert len(grid) == 72 and len(grid.scratch) == 9
    assert grid.loss_label == "error rate (fraction)" and grid.data_label == "images"
    assert grid.runs["loss"].between(0, 1).all()
    assert sorted(grid.runs["pretrain_tokens"].unique())[:3] == [0, 1000, 2000]


def test_li_best_learning_rate_below_a_billion():
    d = unshipped("li")
    grid, _ = quietly(d.table())
    assert len(grid) == 79 and grid.runs["n_params"].max() < 1e9


def test_a_fit_file_keeps_what_its_numbers_are(tmp_path):
    """An error rate over images stays one through save and load, and the report says so."""
    from dataclasses import replace

    from bayes_transfer.fit import load_fit
    from bayes_transfer.report import units_text
    from test_report import known_fit

    fit = known_fit()
    table = fit.grid.runs[["run", "target", "source", "n_params", "data_tokens", "pretrain_tokens", "seed", "loss"]]
    table = table.assign(loss=table["loss"] * 30)  # percent
    table.attrs.update(metric="error_rate", loss_units="percent", data_unit="images")
    grid, _ = quietly(table)
    path = replace(fit, grid=grid).save(tmp_path / "f.fit.nc")
    back = load_fit(path).grid
    assert (back.metric, back.attrs["loss_units"], back.data_unit) == ("error_rate", "fraction", "images")
    assert back.runs["loss"].max() <= 1 and back.sha256 == grid.sha256
    assert units_text(back) == "Loss: error rate (fraction); data counted in images"


@pytest.mark.slow
def test_cli_fits_a_shipped_table_and_the_fit_file_keeps_its_units(tmp_path):
    from bayes_transfer.cli import app
    from bayes_transfer.fit import load_fit

    out = tmp_path / "gadre.fit.nc"
    result = CliRunner().invoke(app, ["fit", str(ext.SHIPPED / "gadre2024_overtraining" / "grid.csv"),
                                      "--law", "chinchilla", "--chains", "1", "--draws", "10", "--warmup", "10",
                                      "--out", str(out), "--allow-unconverged"])  # the path, not the sampler
    assert result.exit_code == 0, result.output
    assert "cross-entropy (nats/token); data counted in tokens" in " ".join(result.stdout.split())
    fit = load_fit(out)
    assert fit.grid.attrs["vocab_size"] == 50432 and fit.grid.attrs["token"] == "gpt-neox-bpe"
    assert fit.grid.targets == ["c4_original", "rpj", "rw_original"]
