"""The `bayes-transfer` command: exit codes, one-line errors, and the files it writes.

Most commands run on fit files made from known posteriors (fast); `fit` and
`demo` sample for real with tiny settings on a small simulated grid.
"""

from __future__ import annotations

import h5netcdf
import pytest
import xarray as xr
from typer.testing import CliRunner

import bayes_transfer
from bayes_transfer.cli import app
from bayes_transfer.fit import load_fit
from bayes_transfer.grid import runs_to_dataset
from test_report import SIZES, known_fit, transfer_table

runner = CliRunner()


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    return result


def assert_user_error(result, message):
    assert result.exit_code == 1, result.output
    assert message in result.stderr
    assert "Traceback" not in result.output and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 3  # one message (rich may wrap it)


def save_known(path, **kwargs):
    fit = known_fit(**kwargs)
    fit.idata.add_groups(constant_data=runs_to_dataset(fit.grid))
    fit.save(path)
    return path


@pytest.fixture(scope="module")
def fit_file(tmp_path_factory):
    return save_known(tmp_path_factory.mktemp("fits") / "known.fit.nc")


def small_table(seed=0):
    """3 sizes x 3 fine-tuning amounts, scratch and fine-tuned: enough to identify every parameter."""
    table = transfer_table(seed)
    keep = table["n_params"].isin(SIZES[1:]) & table["data_tokens"].isin([6.4e4, 1e6, 1.6e7])
    return table[keep].reset_index(drop=True)


# ---------------------------------------------------------------- recommend


def test_recommend_prints_the_answer_with_units(fit_file):
    result = invoke("recommend", fit_file, "--budget", 100, "--cost-finetune", 1e-5, "--cost-params", 1e-4,
                    "--currency", "EUR")
    assert result.exit_code == 0, result.output
    for text in ("Spend the budget on", "EUR per fine-tuning token", "nats/token",  # the table counts tokens
                 "Bayes choice", "pre-training data: not evaluated"):
        assert text in result.stdout


def test_recommend_prices_parameters_from_flops(fit_file):
    result = invoke("recommend", fit_file, "--budget", 100, "--cost-finetune", 1e-5, "--price-per-flop", 1e-15,
                    "--data-tokens", 1e6, "--n-params", 1e6)
    assert result.exit_code == 0, result.output
    # 6 x (8e7 pre-training + 1e6 fine-tuning bytes) x 1e-15 per FLOP
    assert f"{6 * 8.1e7 * 1e-15:g} USD per parameter added" in result.stdout


@pytest.mark.parametrize("args, message", [
    (["--budget", 0, "--cost-finetune", 1e-5], "budget must be a positive finite amount, got 0.0"),
    (["--budget", -10, "--cost-finetune", 1e-5], "budget must be a positive finite amount, got -10.0"),
    (["--budget", 10, "--cost-finetune", 0], "cost_finetune must be a positive finite amount"),
    (["--budget", 10, "--cost-finetune", 1e-5, "--cost-params", -1], "cost_params must be a positive"),
    (["--budget", 1e-9, "--cost-finetune", 1], "buys less than one unit"),
    (["--budget", 10, "--cost-finetune", 1e-5, "--cost-params", 1, "--price-per-flop", 1e-15], "not both"),
    (["--budget", 10, "--cost-finetune", 1e-5, "--pair", "code->python"], "unknown pair"),
])
def test_recommend_rejects_bad_budgets_and_costs(fit_file, args, message):
    assert_user_error(invoke("recommend", fit_file, *args), message)


def test_recommend_refuses_an_unconverged_fit(tmp_path):
    path = save_known(tmp_path / "stuck.fit.nc", stuck_chain=True)
    result = invoke("recommend", path, "--budget", 10, "--cost-finetune", 1e-5)
    assert result.exit_code == 3
    assert "DID NOT CONVERGE" in result.stderr
    assert invoke("recommend", path, "--budget", 10, "--cost-finetune", 1e-5, "--allow-unconverged").exit_code == 0


def test_a_fit_file_from_another_version_is_refused(fit_file, tmp_path):
    other = tmp_path / "old.fit.nc"
    other.write_bytes(fit_file.read_bytes())
    with h5netcdf.File(other, "a") as f:
        f.groups["posterior"].attrs["bayes_transfer_version"] = "0.0.1"
    result = invoke("recommend", other, "--budget", 10, "--cost-finetune", 1e-5)
    assert_user_error(result, f"written by bayes_transfer 0.0.1, this is {bayes_transfer.__version__}")


def test_missing_and_wrong_files(tmp_path):
    assert_user_error(invoke("recommend", tmp_path / "nope.nc", "--budget", 1, "--cost-finetune", 1e-5),
                      "no such fit file")
    assert_user_error(invoke("report", tmp_path / "nope.csv", "--out", tmp_path / "r"), "no such file")


# ---------------------------------------------------------------- report


def test_report_from_a_fit_file(fit_file, tmp_path):
    result = invoke("report", fit_file, "--out", tmp_path / "rep", "--budget", 50, "--cost-finetune", 1e-5,
                    "--cost-params", 1e-4)
    assert result.exit_code == 0, result.output
    page = (tmp_path / "rep" / "index.html").read_text()
    assert "Converged." in page and "1e-05 USD per fine-tuning token" in page
    assert (tmp_path / "rep" / "summary.md").exists()


def test_report_of_an_unconverged_fit_exits_3_but_writes_the_warning(tmp_path):
    path = save_known(tmp_path / "stuck.fit.nc", stuck_chain=True)
    result = invoke("report", path, "--out", tmp_path / "rep")
    assert result.exit_code == 3
    assert "THE FIT DID NOT CONVERGE" in (tmp_path / "rep" / "index.html").read_text()


def test_transfer_report_of_a_grid_without_finetuned_runs(tmp_path):
    table = small_table()
    csv = tmp_path / "scratch_only.csv"
    table[table["source"] == "none"].to_csv(csv, index=False)
    result = invoke("report", csv, "--law", "transfer", "--out", tmp_path / "rep")
    assert_user_error(result, "law 'transfer' needs fine-tuned runs")
    assert not (tmp_path / "rep").exists()


def test_report_needs_budget_and_cost_together(fit_file, tmp_path):
    assert_user_error(invoke("report", fit_file, "--out", tmp_path, "--budget", 5), "together")


# ---------------------------------------------------------------- usage errors and help


@pytest.mark.parametrize("args", [
    ["fit"],                                   # missing argument
    ["fit", "grid.csv", "--bogus"],            # unknown option
    ["recommend", "x.nc", "--budget", "lots", "--cost-finetune", "1"],  # not a number
    ["nonsense"],
])
def test_usage_errors_exit_2(args):
    assert invoke(*args).exit_code == 2


def test_unknown_law_is_a_usage_error(tmp_path):
    csv = tmp_path / "g.csv"
    small_table().to_csv(csv, index=False)
    result = invoke("fit", csv, "--law", "hernandez")
    assert result.exit_code == 2 and "unknown law" in result.output


def test_help_explains_commands_and_exit_codes():
    result = invoke("--help")
    assert result.exit_code == 0
    for text in ("fit", "report", "recommend", "demo", "Exit codes"):
        assert text in result.stdout
    sub = invoke("recommend", "--help")
    assert "--cost-finetune" in sub.stdout and "--price-per-flop" in sub.stdout


def test_demo_without_shipped_grids_says_so(tmp_path):
    result = invoke("demo", "--grids", tmp_path / "empty", "--out", tmp_path / "demo")
    assert_user_error(result, "no loss grid shipped")


# ---------------------------------------------------------------- real sampling


def test_fit_saves_the_posterior_and_exits_3_when_unconverged(tmp_path):
    csv = tmp_path / "grid.csv"
    small_table().to_csv(csv, index=False)
    out = tmp_path / "grid.fit.nc"
    # the demo's --fast settings: the second sampling in this process reuses the compiled sampler
    result = invoke("fit", csv, "--out", out, "--chains", 2, "--draws", 50, "--warmup", 50, "--mass-matrix", "dense",
                    "--target-accept", 0.95)
    # 50 draws cannot pass the ESS check: exit 3, the fit saved all the same
    assert result.exit_code == 3, result.output
    assert "DID NOT CONVERGE" in result.stderr and "dense mass matrix" in result.stderr
    fit = load_fit(out)
    assert fit.law == "transfer" and fit.posterior.sizes["draw"] == 50
    assert fit.sampler["mass_matrix"] == "dense" and fit.sampler["target_accept"] == 0.95
    assert "k[text->python]" in result.stdout  # the summary table, labels intact


def test_demo_fits_a_shipped_grid_and_writes_the_report(tmp_path):
    table = small_table(seed=1)
    grids = tmp_path / "grids"
    grids.mkdir()
    ds = xr.Dataset({"loss": ("run", table["loss"].to_numpy())},
                    coords={c: ("run", table[c].to_numpy()) for c in
                            ("target", "source", "n_params", "pretrain_tokens", "data_tokens", "seed")},
                    attrs={"loss_units": "nats"})
    ds.to_netcdf(grids / "text_to_python.nc", engine="h5netcdf")
    result = invoke("demo", "--grids", grids, "--grid", "text_to_python", "--out", tmp_path / "demo", "--fast",
                    "--allow-unconverged")
    assert result.exit_code == 0, result.output
    page = (tmp_path / "demo" / "index.html").read_text()
    assert "THE FIT DID NOT CONVERGE" in page  # --fast settings: honest about it
    assert (tmp_path / "demo" / "fig_transferred_data.png").exists()
    assert ">Prior sensitivity</h2>" in page  # the headline's dependence on the priors, refitted
