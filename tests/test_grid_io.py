"""load_grid: the netCDF contract, plain tables, and every kind of bad input."""

import math
import warnings

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from bayes_transfer import Grid, GridError, load_grid


def table(**over):
    df = pd.DataFrame(
        {
            "target": ["python"] * 4,
            "source": ["none", "none", "text", "text"],
            "n_params": [1e5, 1e6, 1e5, 1e6],
            "data_tokens": [1e6, 1e6, 1e6, 1e6],
            "pretrain_tokens": [0, 0, 8e7, 8e7],
            "seed": [0, 0, 0, 0],
            "loss": [2.0, 1.8, 1.7, 1.5],
        }
    )
    for k, v in over.items():
        df[k] = v
    return df


def dataset(n_eval=3, **attrs):
    df = table()
    n = len(df)
    ds = xr.Dataset(
        {
            "loss": ("run", df["loss"].to_numpy()),
            "best_step": ("run", np.arange(n) * 100),
            "status": ("run", np.array(["ok", "ok", "capped", "failed"], dtype=object)),
            "status_reason": ("run", np.array(["", "", "step cap", "NaN loss"], dtype=object)),
            "curve_tokens": (("run", "eval"), np.tile(np.arange(n_eval, dtype=float), (n, 1))),
            "curve_loss": (("run", "eval"), np.full((n, n_eval), 2.5)),
        },
        coords={
            "target": ("run", df["target"].to_numpy(dtype=object)),
            "source": ("run", df["source"].to_numpy(dtype=object)),
            "n_params": ("run", df["n_params"].to_numpy()),
            "n_layer": ("run", np.array([2, 4, 2, 4])),
            "d_model": ("run", np.array([64, 128, 64, 128])),
            "pretrain_tokens": ("run", df["pretrain_tokens"].to_numpy()),
            "data_tokens": ("run", df["data_tokens"].to_numpy()),
            "seed": ("run", df["seed"].to_numpy()),
        },
        attrs={"loss_units": "nats", "token": "byte", "vocab_size": 256, **attrs},
    )
    return ds


def test_table_round_trip_and_helpers(tmp_path):
    g = load_grid(table())
    assert isinstance(g, Grid) and len(g) == 4
    assert g.targets == ["python"] and g.sources == ["text"] and g.pairs == [("text", "python")]
    assert len(g.scratch) == 2 and len(g.finetuned) == 2
    path = tmp_path / "g.csv"
    table().to_csv(path, index=False)
    g2 = load_grid(path)
    assert g2.sha256 == g.sha256
    assert load_grid(g) is g


def test_hash_ignores_row_order_and_sees_losses():
    df = table()
    assert load_grid(df.iloc[::-1]).sha256 == load_grid(df).sha256
    assert load_grid(table(loss=[2.0, 1.8, 1.7, 1.51])).sha256 != load_grid(df).sha256


def test_minimal_table_defaults():
    g = load_grid(pd.DataFrame({"n_params": [1e5, 1e6], "data_tokens": [1e6, 1e7], "loss": [2.0, 1.5]}))
    assert list(g.runs["source"]) == ["none", "none"] and list(g.runs["target"]) == ["target"] * 2
    assert (g.runs["pretrain_tokens"] == 0).all()


def test_one_cell_fine_tuned_from_two_pre_training_runs_is_two_runs():
    # the trainer's pre-training seeds: same cell, different pre-training run (and, by chance, same tokens_seen)
    rows = [dict(n_params=1e5, data_tokens=8192, loss=2.0 + i / 10, source="text", target="python",
                 pretrain_tokens=1e6, seed=0, tokens_seen=1e6, pretrain_run=f"pre.s{i}") for i in range(2)]
    assert len(load_grid(pd.DataFrame(rows)).runs) == 2
    with pytest.raises(GridError, match="duplicated runs"):
        load_grid(pd.DataFrame(rows).assign(pretrain_run="pre.s0"))


def test_netcdf_excludes_failed_and_capped(tmp_path):
    path = tmp_path / "grid.nc"
    dataset().to_netcdf(path, engine="h5netcdf")
    with pytest.warns(UserWarning) as record:
        g = load_grid(path)
    messages = " ".join(str(w.message) for w in record)
    assert "1 failed run(s) excluded" in messages and "NaN loss" in messages
    assert "1 capped run(s) excluded" in messages
    assert len(g.runs) == 2 and len(g.excluded) == 2
    reasons = dict(zip(g.excluded["status"], g.excluded["status_reason"]))
    assert reasons["failed"] == "NaN loss" and "step cap" in reasons["capped"]
    assert g.curves is not None and g.curves.sizes["run"] == 2
    assert {"n_layer", "d_model", "best_step"} <= set(g.runs.columns)


def test_capped_runs_kept_on_request_with_a_warning(tmp_path):
    with pytest.warns(UserWarning) as record:
        g = load_grid(dataset(), include_capped=True)
    messages = " ".join(str(w.message) for w in record)
    assert "1 run(s) hit their step cap" in messages and "kept" in messages
    assert len(g.runs) == 3 and list(g.excluded["status"]) == ["failed"]
    assert g.curves.sizes["run"] == 3


def test_failed_run_with_nan_loss_is_excluded_not_an_error():
    ds = dataset()
    ds["loss"] = ds["loss"].where(ds["status"] != "failed")
    with pytest.warns(UserWarning, match="failed"):
        g = load_grid(ds, include_capped=True)
    assert len(g) == 3


def test_bits_converted_with_note():
    ds = dataset()
    ds.attrs["loss_units"] = "bits"
    with pytest.warns(UserWarning, match="bits"):
        g = load_grid(ds.where(ds["status"] != "failed", drop=True), include_capped=True)
    np.testing.assert_allclose(g.runs["loss"], np.array([2.0, 1.8, 1.7]) * math.log(2))
    assert any("bits" in n for n in g.attrs["notes"])
    np.testing.assert_allclose(g.curves["curve_loss"], 2.5 * math.log(2))


def test_vocabulary_bound_applies_to_grids_that_declare_one():
    high = table(loss=[2.0, 7.9, 1.7, 1.5])
    # a byte vocabulary (declared as such) cannot cost more than ln 256 = 5.545 nats
    with pytest.raises(GridError, match=r"above ln\(vocab_size\) = 5.545.*run 1 \(loss=7.9\)"):
        load_grid(high, vocab_size=256)
    with pytest.raises(GridError, match=r"above ln\(vocab_size\)"):
        load_grid(dataset().assign(loss=("run", [2.0, 7.9, 1.7, 1.5])))  # token="byte"
    # another lab's table (50k BPE tokens: a uniform guess is 10.8 nats) declares none
    assert load_grid(high).runs["loss"].max() == 7.9
    assert load_grid(high, vocab_size=50_000).attrs["vocab_size"] == 50_000
    with pytest.raises(GridError, match=r"above 13.816 nats .*no vocab_size declared.*run 1 \(loss=20\)"):
        load_grid(table(loss=[2.0, 20.0, 1.7, 1.5]))


def test_csv_header_declares_attributes(tmp_path):
    path = tmp_path / "g.csv"
    path.write_text("# loss_units: bits\n# vocab_size: 256\n#\n" + table().to_csv(index=False))
    with pytest.warns(UserWarning, match="bits"):
        g = load_grid(path)
    np.testing.assert_allclose(g.runs["loss"], table()["loss"] * math.log(2))
    assert g.attrs["loss_units"] == "nats" and g.attrs["vocab_size"] == 256
    with pytest.raises(GridError, match=r"declares loss_units='bits' but loss_units='nats' was given"):
        load_grid(path, units="nats")
    path.write_text("# this is prose\n" + table().to_csv(index=False))
    with pytest.raises(GridError, match=r"line 1: a header line must read '# key: value'"):
        load_grid(path)


def test_dataframe_attrs_declare_an_error_rate_over_images():
    df = table(loss=[40.0, 30.0, 25.0, 20.0])
    df.attrs.update(metric="error_rate", loss_units="percent", data_unit="images")
    with pytest.warns(UserWarning, match="percent"):
        g = load_grid(df)
    np.testing.assert_allclose(g.runs["loss"], [0.4, 0.3, 0.25, 0.2])
    assert (g.metric, g.data_unit, g.attrs["loss_units"]) == ("error_rate", "images", "fraction")
    assert g.loss_label == "error rate (fraction)" and g.data_label == "images"
    assert "error rate (fraction), data in images" in repr(g)
    with pytest.raises(GridError, match=r"error rates above 1 at run 0 \(loss=40\)"):
        load_grid(table(loss=[40.0, 0.3, 0.25, 0.2]), metric="error_rate")
    with pytest.raises(GridError, match=r"loss units 'bits' do not fit metric 'error_rate'"):
        load_grid(table(), metric="error_rate", units="bits")
    with pytest.raises(GridError, match="unknown data unit 'pixels'"):
        load_grid(table(), data_unit="pixels")


def test_trainer_grids_count_bytes():
    g = load_grid(dataset().where(lambda d: d["status"] == "ok", drop=True))
    assert g.data_label == "bytes" and g.loss_label == "cross-entropy (nats/byte)"


def test_missing_units_attr_is_an_error():
    ds = dataset()
    del ds.attrs["loss_units"]
    with pytest.raises(GridError, match="loss_units"):
        load_grid(ds)


@pytest.mark.parametrize(
    "column, values, match",
    [
        ("loss", [2.0, np.nan, 1.7, 1.5], r"'loss' must be finite and positive.*run 1 \(loss=nan\)"),
        ("loss", [2.0, 1.8, 0.0, 1.5], r"'loss' must be finite and positive.*run 2"),
        ("loss", [2.0, 1.8, 1.7, np.inf], r"'loss' must be finite and positive.*run 3"),
        ("n_params", [1e5, -1e6, 1e5, 1e6], r"'n_params' must be finite and positive.*run 1"),
        ("data_tokens", [0, 1e6, 1e6, 1e6], r"'data_tokens' must be finite and positive.*run 0"),
        ("loss", ["2.0", "x", "1.7", "1.5"], r"'loss' must be numeric.*run 1"),
        ("pretrain_tokens", [0, 0, -1, 8e7], r"pretrain_tokens.*>= 0.*run 2"),
        ("pretrain_tokens", [5, 0, 8e7, 8e7], r"scratch runs.*pretrain_tokens > 0.*run 0"),
        ("source", ["none", None, "text", "text"], r"'source' must hold strings.*run 1"),
        ("source", ["none", "none", " text", "text"], r"'source': .*leading/trailing spaces.*run 2 \(source=' text'\)"),
        ("target", ["python", "python", "a->b", "python"], r"'target': .*containing '->'.*run 2"),
        ("n_params", [1e5, 1e300, 1e5, 1e6], r"'n_params' outside the plausible range.*run 1 \(n_params=1e\+300\)"),
        ("data_tokens", [1e6, 1e6, 1e6, 1e17], r"'data_tokens' outside the plausible range .* tokens at run 3"),
        ("seed", [0, 1.5, 0, 0], r"'seed' must hold integers; bad values at run 1 \(seed=1.5\)"),
        ("status", ["ok", "done", "ok", "ok"], r"'status' must be one of .*run 1 \(status='done'\)"),
    ],
)
def test_bad_values_named(column, values, match):
    with pytest.raises(GridError, match=match):
        load_grid(table(**{column: values}))


def test_missing_column_named():
    with pytest.raises(GridError, match=r"lacks required column\(s\) \['loss'\]"):
        load_grid(table().drop(columns="loss"))
    ds = dataset().drop_vars("pretrain_tokens")
    with pytest.raises(GridError, match="pretrain_tokens"):
        load_grid(ds)


def test_duplicates_named():
    with pytest.raises(GridError, match=r"duplicated runs.*run 2, run 3"):
        load_grid(table(n_params=[1e5, 1e6, 1e5, 1e5]))
    # different seeds are replicates, not duplicates
    g = load_grid(table(n_params=[1e5, 1e6, 1e5, 1e5], seed=[0, 0, 0, 1]))
    assert len(g) == 4


def test_empty_and_wrong_inputs():
    with pytest.raises(GridError, match="empty"):
        load_grid(table().iloc[:0])
    with pytest.raises(GridError, match="no such grid file"):
        load_grid("/nonexistent/grid.nc")
    with pytest.raises(GridError, match="cannot read a grid from a list"):
        load_grid([1, 2])
    with pytest.raises(GridError, match="unknown loss units"):
        load_grid(table(), units="furlongs")


def test_all_failed_is_empty():
    ds = dataset()
    ds["status"] = ("run", np.array(["failed"] * 4, dtype=object))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(GridError, match="every run was excluded"):
            load_grid(ds)


def test_runs_repeating_their_data_differently_are_not_duplicates():
    # same unique data (data_tokens), seen for 1 and 4 epochs: two runs of a data-constrained grid
    df = table(n_params=[1e5, 1e5, 1e6, 1e6], source=["none"] * 4, pretrain_tokens=[0] * 4,
               tokens_seen=[1e6, 4e6, 1e6, 4e6])
    assert len(load_grid(df)) == 4
    with pytest.raises(GridError, match=r"duplicated runs \(same .*tokens_seen\) at run 0, run 1"):
        load_grid(df.assign(tokens_seen=[1e6, 1e6, 1e6, 4e6]))
