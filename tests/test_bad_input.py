"""Every bad input to the `bayes-transfer` command is refused in one clear line, and nothing is damaged.

Each case runs the command in a fresh workspace (a valid table, a valid fit
file, an existing report) and is counted as:

- refused clearly: exit 1 (2 for a usage error), one `error:` line naming the
  problem (the case's expected words), no traceback, no `np.float64(...)`;
- corrupt: the workspace changed (a file written, damaged or left behind), or
  the input was accepted (exit 0).

The figure is printed (`pytest -s`) and must read: all refused clearly, 0 corrupt.
"""

from __future__ import annotations

import errno
import importlib
import os
import tempfile
import time
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import arviz as az
import h5netcdf
import h5py
import pytest
import xarray as xr
from typer.testing import CliRunner

from bayes_transfer.cli import app
from test_cli import save_known, small_table
from test_report import known_fit
from _workspace import files_of, invoke_in_copy

runner = CliRunner()
# the package exports functions of these modules' names
report_module = importlib.import_module("bayes_transfer.report")
fit_module = importlib.import_module("bayes_transfer.fit")


@dataclass
class Case:
    name: str
    args: Callable[[Path], list]  # the command line, given the workspace
    expect: str  # words the error line must contain
    setup: Callable[[Path], None] | None = None  # writes the bad input into the workspace
    patch: Callable[[pytest.MonkeyPatch], None] | None = None  # a fault (full disk, read-only folder)
    code: int = 1


# ---------------------------------------------------------------- the workspace


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A table, a fit file and an earlier report, as a user would have them."""
    ws = tmp_path_factory.mktemp("pristine")
    small_table().to_csv(ws / "grid.csv", index=False)
    save_known(ws / "good.fit.nc")
    (ws / "rep").mkdir()  # an earlier report: any change to it is damage
    for name in ("index.html", "summary.md", "fig_loss_grid.png"):
        (ws / "rep" / name).write_text(f"earlier {name}")
    return ws


def write_table(name, **changes):
    """A setup writing grid.csv's table with some cells changed: {column: (row, value)}."""
    def setup(ws):
        df = small_table()
        for col, (row, value) in changes.items():
            if col not in df.columns:
                df[col] = 0
            df[col] = df[col].astype(object)
            df.loc[row, col] = value
        df.to_csv(ws / name, index=False)
    return setup


def write_text(name, text: str | bytes):
    def setup(ws):
        (ws / name).write_bytes(text if isinstance(text, bytes) else text.encode())
    return setup


def edit_fit(change):
    """A setup writing bad.fit.nc: the good fit file changed by `change(h5netcdf.File)`."""
    def setup(ws):
        shutil.copy(ws / "good.fit.nc", ws / "bad.fit.nc")
        with h5netcdf.File(ws / "bad.fit.nc", "a") as f:
            change(f)
    return setup


def drop_group(name):
    def setup(ws):
        shutil.copy(ws / "good.fit.nc", ws / "bad.fit.nc")
        with h5py.File(ws / "bad.fit.nc", "a") as f:
            del f[name]
    return setup


def del_attr(name):
    def change(f):
        del f.groups["posterior"].attrs[name]
    return change


def set_attr(name, value):
    def change(f):
        f.groups["posterior"].attrs[name] = value
    return change


def grid_nc(name, **attrs_and_drop):
    def setup(ws):
        df = small_table()
        ds = xr.Dataset({"loss": ("run", df["loss"].to_numpy())},
                        coords={c: ("run", df[c].to_numpy()) for c in
                                ("target", "source", "n_params", "pretrain_tokens", "data_tokens", "seed")},
                        attrs={k: v for k, v in attrs_and_drop.items() if k != "rename"})
        if "rename" in attrs_and_drop:
            ds = ds.rename_dims({"run": attrs_and_drop["rename"]})
        ds.to_netcdf(ws / name, engine="h5netcdf")
    return setup


def oserror(target, attr: str, err: int):
    """A patch making `target.attr` fail as the system would (disk full, read-only)."""
    def patch(mp):
        def fail(*a, **k):
            raise OSError(err, os.strerror(err), "somefile")
        mp.setattr(target, attr, fail)
    return patch


def half_file(ws):
    data = (ws / "good.fit.nc").read_bytes()
    (ws / "bad.fit.nc").write_bytes(data[: len(data) // 2])


FIT = lambda ws: ["fit", ws / "grid.csv", "--method", "map"]  # noqa: E731
REC = ["--budget", 10, "--cost-finetune", 1e-5]

TABLES = [
    Case("n_params 1e300", FIT, "'n_params' outside the plausible range", write_table("grid.csv", n_params=(3, 1e300))),
    Case("n_params negative", FIT, "'n_params' must be finite and positive", write_table("grid.csv", n_params=(0, -5))),
    Case("n_params zero", FIT, "'n_params' must be finite and positive", write_table("grid.csv", n_params=(0, 0))),
    Case("n_params text", FIT, "'n_params' must be numeric", write_table("grid.csv", n_params=(1, "big"))),
    Case("data_tokens zero", FIT, "'data_tokens' must be finite and positive", write_table("grid.csv", data_tokens=(2, 0))),
    Case("data_tokens 1e17", FIT, "'data_tokens' outside the plausible range", write_table("grid.csv", data_tokens=(2, 1e17))),
    Case("loss None", FIT, "'loss' must be finite and positive (missing values count as bad); bad values at run 4 (loss=nan)",
         write_table("grid.csv", loss=(4, "None"))),
    Case("loss empty", FIT, "'loss' must be finite and positive", write_table("grid.csv", loss=(4, ""))),
    Case("loss text", FIT, "'loss' must be numeric; non-numeric values at run 4 (loss='x')", write_table("grid.csv", loss=(4, "x"))),
    Case("loss negative", FIT, "'loss' must be finite and positive", write_table("grid.csv", loss=(4, -1.0))),
    Case("loss inf", FIT, "'loss' must be finite and positive", write_table("grid.csv", loss=(4, "inf"))),
    Case("loss in bits of a big vocabulary", FIT, "losses above 13.816 nats", write_table("grid.csv", loss=(4, 15.6))),
    Case("loss above a declared byte vocabulary", FIT, "above ln(vocab_size) = 5.545",
         lambda ws: (ws / "grid.csv").write_text("# vocab_size: 256\n" + small_table().assign(loss=7.0).to_csv(index=False))),
    Case("seed 1.5", FIT, "'seed' must hold integers; bad values at run 0 (seed=1.5)", write_table("grid.csv", seed=(0, 1.5))),
    Case("seed text", FIT, "'seed' must be numeric", write_table("grid.csv", seed=(0, "first"))),
    Case("source padded", FIT, "names with leading/trailing spaces or containing '->' at run 5 (source=' text')", write_table("grid.csv", source=(5, " text"))),
    Case("target empty", FIT, "'target' must hold strings; bad values at run 1", write_table("grid.csv", target=(1, ""))),
    Case("source with ->", FIT, "containing '->'", write_table("grid.csv", source=(5, "a->b"))),
    Case("status unknown", FIT, "'status' must be one of ('ok', 'capped', 'failed'); bad values at run 2 (status='done')",
         lambda ws: small_table().assign(status=["ok", "ok", "done"] + ["ok"] * 15).to_csv(ws / "grid.csv", index=False)),
    Case("pretrain_tokens negative", FIT, "'pretrain_tokens' must be finite and >= 0",
         write_table("grid.csv", pretrain_tokens=(6, -1))),
    Case("scratch with pretrain_tokens", FIT, "scratch runs (source 'none') with pretrain_tokens > 0",
         write_table("grid.csv", pretrain_tokens=(0, 1000))),
    Case("duplicated runs", FIT, "duplicated runs",
         lambda ws: __import__("pandas").concat([small_table(), small_table().iloc[:2]]).to_csv(ws / "grid.csv", index=False)),
    Case("missing loss column", FIT, "lacks required column(s) ['loss']",
         lambda ws: small_table().drop(columns="loss").to_csv(ws / "grid.csv", index=False)),
    Case("empty file", FIT, "is empty", write_text("grid.csv", "")),
    Case("header only", FIT, "grid is empty: no runs", write_text("grid.csv", "n_params,data_tokens,loss\n")),
    Case("binary garbage", FIT, "not a UTF-8 text table", write_text("grid.csv", bytes(range(256)) * 4)),
    Case("ragged rows", FIT, "not a well-formed CSV table", write_text("grid.csv", "n_params,data_tokens,loss\n1e6,1e6,2,9,9\n1e6\n")),
    Case("prose header", FIT, "line 1: a header line must read '# key: value'",
         lambda ws: (ws / "grid.csv").write_text("# made last week\n" + small_table().to_csv(index=False))),
    Case("bad vocab_size header", FIT, "vocab_size must be an integer >= 2",
         lambda ws: (ws / "grid.csv").write_text("# vocab_size: many\n" + small_table().to_csv(index=False))),
    Case("units contradict header", lambda ws: [*FIT(ws), "--units", "nats"], "declares loss_units='bits' but loss_units='nats'",
         lambda ws: (ws / "grid.csv").write_text("# loss_units: bits\n" + small_table().to_csv(index=False))),
    Case("all runs failed", FIT, "every run was excluded", lambda ws: small_table().assign(status="failed").to_csv(ws / "grid.csv", index=False)),
    Case("unknown units", lambda ws: [*FIT(ws), "--units", "furlongs"], "unknown loss units 'furlongs'"),
    Case("percent above 100", lambda ws: [*FIT(ws), "--metric", "error_rate", "--units", "percent"], "error rates above 1",
         write_table("grid.csv", loss=(3, 140.0))),
    Case("unknown metric in header", FIT, "unknown metric 'accuracy'",
         lambda ws: (ws / "grid.csv").write_text("# metric: accuracy\n" + small_table().to_csv(index=False))),
    Case("unknown data unit in header", FIT, "unknown data unit 'bytes'",
         lambda ws: (ws / "grid.csv").write_text("# data_unit: bytes\n" + small_table().to_csv(index=False))),
    Case("vocab_size below 2", FIT, "vocab_size must be an integer >= 2",
         lambda ws: (ws / "grid.csv").write_text("# vocab_size: 1\n" + small_table().to_csv(index=False))),
    Case("metric contradicts header", lambda ws: [*FIT(ws), "--metric", "cross_entropy"],
         "declares metric='error_rate' but metric='cross_entropy'",
         lambda ws: (ws / "grid.csv").write_text("# metric: error_rate\n" + small_table().to_csv(index=False))),
    Case("header only, no table", FIT, "is empty", write_text("grid.csv", "# loss_units: nats\n")),
    Case("tokens_seen duplicates", FIT, "duplicated runs (same target, source, n_params, data_tokens, pretrain_tokens, seed, tokens_seen)",
         lambda ws: __import__("pandas").concat([small_table(), small_table().iloc[:1]]).assign(tokens_seen=1e9)
         .to_csv(ws / "grid.csv", index=False)),
    Case("seed huge", FIT, "'seed' must hold integers", write_table("grid.csv", seed=(0, 1e30))),
    Case("n_params tiny", FIT, "'n_params' outside the plausible range", write_table("grid.csv", n_params=(0, 3))),
    Case("error rate above 1", lambda ws: [*FIT(ws), "--metric", "error_rate"], "error rates above 1"),
    Case("bits for an error rate", lambda ws: [*FIT(ws), "--metric", "error_rate", "--units", "bits"], "do not fit metric 'error_rate'"),
    Case("unknown metric", lambda ws: [*FIT(ws), "--metric", "accuracy"], "unknown metric 'accuracy'"),
    Case("unknown data unit", lambda ws: [*FIT(ws), "--data-unit", "pixels"], "unknown data unit 'pixels'"),
    Case("grid .txt", lambda ws: ["fit", ws / "grid.txt"], "neither .nc nor .csv", write_text("grid.txt", "n_params\n")),
    Case("grid is a folder", lambda ws: ["fit", ws / "rep"], "is a directory"),
    Case("grid missing", lambda ws: ["fit", ws / "nope.csv"], "no such grid file"),
    Case("netCDF without loss_units", lambda ws: ["fit", ws / "g.nc"], "no 'loss_units' attribute", grid_nc("g.nc")),
    Case("netCDF without run dim", lambda ws: ["fit", ws / "g.nc"], "no 'run' dimension", grid_nc("g.nc", loss_units="nats", rename="row")),
    Case("netCDF garbage", lambda ws: ["fit", ws / "g.nc"], "cannot read", write_text("g.nc", b"\x89HDF junk" * 50)),
    Case("transfer law without fine-tuned runs", lambda ws: [*FIT(ws), "--law", "transfer"], "needs fine-tuned runs",
         lambda ws: small_table().query("source == 'none'").to_csv(ws / "grid.csv", index=False)),
    Case("unknown law", lambda ws: [*FIT(ws), "--law", "hernandez"], "unknown law", code=2),
]

OUTPUTS = [
    Case("fit --out into a missing folder", lambda ws: [*FIT(ws), "--out", ws / "no" / "f.nc"], "folder"),
    Case("fit --out is a folder", lambda ws: [*FIT(ws), "--out", ws / "rep"], "is a folder"),
    Case("fit --out read-only", lambda ws: [*FIT(ws), "--out", ws / "f.nc"], "Read-only file system",
         patch=oserror(tempfile, "TemporaryFile", errno.EROFS)),
    Case("fit disk full at save", lambda ws: [*FIT(ws), "--out", ws / "f.nc"], "No space left on device",
         patch=lambda mp: (oserror(az.InferenceData, "to_netcdf", errno.ENOSPC)(mp),
                           mp.setattr(fit_module, "fit", lambda *a, **k: known_fit()))),  # no sampling: the save fails
    Case("report --out is a file", lambda ws: ["report", ws / "good.fit.nc", "--out", ws / "grid.csv"], "not a folder"),
    Case("report --out under a file", lambda ws: ["report", ws / "good.fit.nc", "--out", ws / "grid.csv" / "r"], "not a folder"),
    Case("report disk full mid-way", lambda ws: ["report", ws / "good.fit.nc", "--out", ws / "rep"], "No space left on device",
         patch=oserror(report_module, "atomic_write", errno.ENOSPC)),
    Case("demo --out is a file", lambda ws: ["demo", "--grids", ws / "grids", "--grid", "g", "--out", ws / "grid.csv",
                                             "--fast"], "not a folder",
         lambda ws: (ws / "grids").mkdir() or shutil.copy(ws / "good.fit.nc", ws / "grids" / "g.nc")),
    Case("demo without grids", lambda ws: ["demo", "--grids", ws / "none", "--out", ws / "d"], "no loss grid shipped"),
    Case("demo of a grid not shipped", lambda ws: ["demo", "--grids", ws / "grids", "--grid", "nope", "--out", ws / "d"],
         "no grid 'nope' in",
         lambda ws: (ws / "grids").mkdir() or shutil.copy(ws / "good.fit.nc", ws / "grids" / "g.nc")),
]

FIT_FILES = [
    Case("recommend a grid file", lambda ws: ["recommend", ws / "g.nc", *REC], "not a fit file (no posterior group)",
         grid_nc("g.nc", loss_units="nats")),
    Case("recommend a CSV", lambda ws: ["recommend", ws / "grid.csv", *REC], "not a netCDF fit file"),
    Case("recommend a folder", lambda ws: ["recommend", ws / "rep", *REC], "is a directory"),
    Case("recommend a missing file", lambda ws: ["recommend", ws / "nope.nc", *REC], "no such fit file"),
    Case("fit file without grid_sha256", lambda ws: ["recommend", ws / "bad.fit.nc", *REC], "lacks grid_sha256",
         edit_fit(del_attr("grid_sha256"))),
    Case("fit file without constant_data", lambda ws: ["recommend", ws / "bad.fit.nc", *REC], "lacks constant_data",
         drop_group("constant_data")),
    Case("fit file of an unknown law", lambda ws: ["recommend", ws / "bad.fit.nc", *REC], "law 'hernandez', which this version does not know",
         edit_fit(set_attr("law", "hernandez"))),
    Case("fit file with damaged JSON", lambda ws: ["recommend", ws / "bad.fit.nc", *REC], "model_config attribute is not valid JSON",
         edit_fit(set_attr("model_config", "{law: "))),
    Case("fit file with a changed grid", lambda ws: ["recommend", ws / "bad.fit.nc", *REC], "does not match its recorded sha256",
         edit_fit(set_attr("grid_sha256", "0" * 64))),
    Case("fit file from another version", lambda ws: ["recommend", ws / "bad.fit.nc", *REC], "written by bayes_transfer 0.0.1",
         edit_fit(set_attr("bayes_transfer_version", "0.0.1"))),
    Case("fit file truncated", lambda ws: ["recommend", ws / "bad.fit.nc", *REC], "not a netCDF fit file", half_file),
    Case("fit file empty", lambda ws: ["recommend", ws / "bad.fit.nc", *REC], "not a netCDF fit file", write_text("bad.fit.nc", b"")),
    Case("report of a damaged fit file", lambda ws: ["report", ws / "bad.fit.nc", "--out", ws / "rep"], "lacks grid_attrs",
         edit_fit(del_attr("grid_attrs"))),
]

ARGUMENTS = [
    Case("report --budget 0", lambda ws: ["report", ws / "good.fit.nc", "--out", ws / "rep", "--budget", 0,
                                          "--cost-finetune", 1e-5], "budget must be a positive finite amount, got 0"),
    Case("report --budget nan", lambda ws: ["report", ws / "good.fit.nc", "--out", ws / "rep", "--budget", "nan",
                                            "--cost-finetune", 1e-5], "budget must be a positive finite amount"),
    Case("report --cost-params -1", lambda ws: ["report", ws / "good.fit.nc", "--out", ws / "rep", "--budget", 5,
                                                "--cost-finetune", 1e-5, "--cost-params", -1], "cost_params must be a positive"),
    Case("report --budget alone", lambda ws: ["report", ws / "good.fit.nc", "--out", ws / "rep", "--budget", 5], "together"),
    Case("report of a fit file with --law", lambda ws: ["report", ws / "good.fit.nc", "--out", ws / "rep", "--law", "kaplan"], "drop --law"),
    Case("report of a fit file with --units", lambda ws: ["report", ws / "good.fit.nc", "--out", ws / "rep", "--units", "bits"], "drop --law/--units"),
    Case("report of a missing file", lambda ws: ["report", ws / "nope.nc", "--out", ws / "rep"], "no such file"),
    Case("recommend --budget 0", lambda ws: ["recommend", ws / "good.fit.nc", "--budget", 0, "--cost-finetune", 1e-5], "budget must be"),
    Case("recommend --budget inf", lambda ws: ["recommend", ws / "good.fit.nc", "--budget", "inf", "--cost-finetune", 1e-5], "budget must be"),
    Case("recommend --cost-finetune -1", lambda ws: ["recommend", ws / "good.fit.nc", "--budget", 1, "--cost-finetune", -1], "cost_finetune must be"),
    Case("recommend two parameter prices", lambda ws: ["recommend", ws / "good.fit.nc", *REC, "--cost-params", 1, "--price-per-flop", 1e-15], "not both"),
    Case("recommend an unknown pair", lambda ws: ["recommend", ws / "good.fit.nc", *REC, "--pair", "code->python"], "unknown pair"),
    Case("recommend a budget too small", lambda ws: ["recommend", ws / "good.fit.nc", "--budget", 1e-9, "--cost-finetune", 1], "buys less than one unit"),
]

CASES = TABLES + OUTPUTS + FIT_FILES + ARGUMENTS


def run_case(case: Case, pristine: Path, tmp_path: Path, monkeypatch) -> tuple[str, bool, str]:
    """'clear', 'unclear' or 'accepted'; whether the workspace changed; the output."""
    result, changed = invoke_in_copy(runner, app, case, pristine, tmp_path, monkeypatch)
    text = result.stdout + result.stderr
    one_line = case.code == 2 or sum(line.startswith("error:") for line in result.stderr.splitlines()) == 1
    crashed = not isinstance(result.exception, SystemExit) or "Traceback" in text  # an exception escaped
    if result.exit_code == 0:
        verdict = "accepted"
    elif result.exit_code == case.code and one_line and not crashed and case.expect in text and "np.float64" not in text:
        verdict = "clear"
    else:
        verdict = "unclear"
        if crashed:
            text += f"\n{type(result.exception).__name__}: {result.exception}"
    return verdict, changed, text


def test_every_bad_input_is_refused_clearly_and_nothing_is_damaged(pristine, tmp_path, monkeypatch, capsys):
    outcomes, seconds = {}, {}
    for case in CASES:
        t0 = time.perf_counter()
        outcomes[case.name] = run_case(case, pristine, tmp_path, monkeypatch)
        seconds[case.name] = time.perf_counter() - t0
    clear = [n for n, (v, _, _) in outcomes.items() if v == "clear"]
    corrupt = [n for n, (v, damaged, _) in outcomes.items() if damaged or v == "accepted"]
    with capsys.disabled():
        print(f"\nbad inputs: {len(CASES)} tried, {len(clear)} refused clearly, {len(corrupt)} corrupt")
        slow = sorted(seconds.items(), key=lambda kv: -kv[1])[:3]
        print("slowest: " + ", ".join(f"{n} {t:.1f} s" for n, t in slow))
    problems = {n: (v, d, t.strip().splitlines()[-1][:160]) for n, (v, d, t) in outcomes.items() if v != "clear" or d}
    assert not problems, problems
    assert len(clear) == len(CASES) and not corrupt


def test_a_failed_report_leaves_the_existing_one_whole(pristine, tmp_path, monkeypatch):
    """A bug part-way through (not an input error) still leaves the old report and no temporary folder."""
    ws = tmp_path / "ws"
    shutil.copytree(pristine, ws)
    before = files_of(ws)

    def broken(*a, **k):
        raise RuntimeError("plotting failed")

    monkeypatch.setattr(report_module.plots, "plot_ppc", broken)
    with pytest.raises(RuntimeError, match="plotting failed"):
        report_module.report(known_fit(), ws / "rep")
    assert files_of(ws) == before


def test_a_report_replaces_the_old_one_whole(pristine, tmp_path):
    ws = tmp_path / "ws"
    shutil.copytree(pristine, ws)
    (ws / "rep" / "stale.png").write_bytes(b"old")
    index = report_module.report(known_fit(law="transfer_gap"), ws / "rep")
    assert index == ws / "rep" / "index.html" and "transfer_gap" in index.read_text()
    assert not (ws / "rep" / "stale.png").exists()  # no mix of two reports
    assert sorted(p.name for p in ws.iterdir() if p.name.startswith(".")) == []


def test_output_folder_is_checked_before_fitting(tmp_path):
    csv = tmp_path / "grid.csv"
    small_table().to_csv(csv, index=False)
    result = runner.invoke(app, ["fit", str(csv), "--out", str(tmp_path / "missing" / "f.nc")])
    assert result.exit_code == 1 and "folder" in result.stderr
    assert "fitting" not in result.stderr  # refused before any sampling started
