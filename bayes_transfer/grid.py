"""Loading and validating loss grids: the one in-memory form the fits read.

A grid arrives as the trainer's netCDF (dims ``run``, ``eval``; the
contract is ``loss_grid``, described in docs/loss_grid.md) or as a plain table (DataFrame or CSV with ``n_params``,
``data_tokens``, ``loss`` and optional ``source``, ``target``,
``pretrain_tokens``, ``seed``). Either way it is checked and becomes a
``Grid``. Bad input raises ``GridError`` naming the rows and the problem;
nothing is dropped without a warning.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

import loss_grid as lg
from loss_grid import CELL, NUMERIC, REQUIRED, SCRATCH

UNITS = (lg.NATS, lg.BITS)
_MAX_LISTED = 8


class GridError(ValueError):
    """A loss grid that cannot be used, with the rows and the problem named."""


@dataclass(frozen=True, eq=False)
class Grid:
    """A validated loss grid.

    ``runs`` has one row per usable run (columns target, source, n_params,
    data_tokens, pretrain_tokens, seed, loss, status, plus whatever else the
    input had); ``run`` is the run's label in the input. ``excluded`` holds
    failed runs and why. ``curves`` holds the learning curves of the usable
    runs when the input had them. ``sha256`` identifies the run table.
    """

    runs: pd.DataFrame
    curves: xr.Dataset | None = None
    attrs: dict = field(default_factory=dict)
    excluded: pd.DataFrame = field(default_factory=pd.DataFrame)
    sha256: str = ""

    @property
    def scratch(self) -> pd.DataFrame:
        return self.runs[self.runs["source"] == SCRATCH]

    @property
    def finetuned(self) -> pd.DataFrame:
        return self.runs[self.runs["source"] != SCRATCH]

    @property
    def targets(self) -> list[str]:
        return sorted(self.runs["target"].unique())

    @property
    def sources(self) -> list[str]:
        return sorted(s for s in self.runs["source"].unique() if s != SCRATCH)

    @property
    def pairs(self) -> list[tuple[str, str]]:
        ft = self.finetuned
        return sorted(set(zip(ft["source"], ft["target"])))

    def __len__(self) -> int:
        return len(self.runs)

    def __repr__(self) -> str:
        return (
            f"Grid({len(self.runs)} runs: {len(self.scratch)} scratch, {len(self.finetuned)} fine-tuned; "
            f"targets {self.targets}, pairs {[pair_name(s, t) for s, t in self.pairs]}; sha256 {self.sha256[:12]})"
        )


pair_name = lg.pair_label


def load_grid(x, *, units: str | None = None, vocab_size: int | None = None, include_capped: bool = False) -> Grid:
    """Read and validate a loss grid.

    ``x``: a path (.nc or .csv), an ``xarray.Dataset``, a ``pandas.DataFrame``
    or a ``Grid`` (returned unchanged). ``units`` ("nats" or "bits") says
    what the losses are in when the input does not (a netCDF declares it in
    its ``loss_units`` attribute; a table without it is taken as nats, and
    losses above ln(vocab_size) are then rejected as probably not nats).
    Bits are converted to nats with a warning. ``vocab_size`` defaults to the
    grid's attribute or 256 (bytes as tokens).

    Runs with status "failed" are excluded. So are runs with status "capped"
    (they hit a step cap before early stopping, so their loss is not the
    data-limited optimum the laws describe) unless ``include_capped``. Every
    excluded run is listed in ``Grid.excluded`` with its reason, and warned of.
    """
    if isinstance(x, Grid):
        return x
    if isinstance(x, (str, Path)):
        path = Path(x)
        if not path.exists():
            raise GridError(f"no such grid file: {path}")
        if path.suffix == ".nc":
            with xr.open_dataset(path, engine="h5netcdf") as ds:
                return _from_dataset(ds.load(), units, vocab_size, include_capped)
        if path.suffix == ".csv":
            return _from_table(pd.read_csv(path), units, vocab_size, {lg.ATTR_SOURCE_FILE: path.name}, include_capped)
        raise GridError(f"grid file {path} is neither .nc nor .csv")
    if isinstance(x, xr.Dataset):
        return _from_dataset(x, units, vocab_size, include_capped)
    if isinstance(x, pd.DataFrame):
        return _from_table(x, units, vocab_size, {}, include_capped)
    raise GridError(f"cannot read a grid from a {type(x).__name__}; give a path, xarray.Dataset or DataFrame")


def _from_dataset(ds: xr.Dataset, units, vocab_size, include_capped=False) -> Grid:
    if lg.RUN not in ds.dims:
        raise GridError(f"grid dataset has no 'run' dimension (dims: {list(ds.dims)})")
    need = (*lg.CELL, lg.LOSS)
    missing = [n for n in need if n not in ds.variables]
    if missing:
        raise GridError(f"grid dataset lacks {missing} (coordinates/variables on 'run')")
    columns = {}
    for name, var in ds.variables.items():
        if var.dims == (lg.RUN,) and name != lg.RUN:
            columns[name] = var.values
    table = pd.DataFrame(columns)
    table.insert(0, lg.RUN, ds[lg.RUN].values if lg.RUN in ds.coords else np.arange(ds.sizes[lg.RUN]))
    attrs = dict(ds.attrs)
    declared = attrs.get(lg.ATTR_LOSS_UNITS)
    if declared is not None and units is not None and declared != units:
        raise GridError(f"grid declares loss_units={declared!r} but units={units!r} was given")
    if declared is None and units is None:
        raise GridError("grid dataset has no 'loss_units' attribute; pass units='nats' or units='bits'")
    curve_vars = [n for n, v in ds.data_vars.items() if lg.EVAL in v.dims]
    curves = ds[curve_vars] if curve_vars else None
    return _finish(table, declared or units, vocab_size or attrs.get(lg.ATTR_VOCAB_SIZE), attrs, curves, include_capped)


def _from_table(df: pd.DataFrame, units, vocab_size, attrs, include_capped=False) -> Grid:
    table = df.copy()
    missing = [c for c in REQUIRED if c not in table.columns]
    if missing:
        raise GridError(f"grid table lacks required column(s) {missing}; it has {list(table.columns)}")
    notes = []
    if "source" not in table.columns:
        table["source"] = SCRATCH
    if "target" not in table.columns:
        table["target"] = "target"
    if "pretrain_tokens" not in table.columns:
        table["pretrain_tokens"] = 0
        if (table["source"].astype(str) != SCRATCH).any():
            notes.append("no pretrain_tokens column: pre-training amounts unknown (set to 0)")
    if "seed" not in table.columns:
        table["seed"] = 0
    if "run" not in table.columns:
        table.insert(0, "run", np.arange(len(table)))
    attrs = {**attrs, "notes": notes} if notes else attrs
    return _finish(table, units or "nats", vocab_size, attrs, None, include_capped)


def _finish(table: pd.DataFrame, units: str, vocab_size, attrs: dict, curves, include_capped=True) -> Grid:
    if units not in UNITS:
        raise GridError(f"unknown loss units {units!r}; expected one of {UNITS}")
    vocab_size = int(vocab_size or 256)
    if len(table) == 0:
        raise GridError("grid is empty: no runs")
    table = table.reset_index(drop=True)
    for col in ("target", "source"):
        bad = table[col].isna() | ~table[col].map(lambda v: isinstance(v, (str, bytes)))
        if bad.any():
            raise GridError(f"column {col!r} must hold strings; bad values at {_rows(table, bad)}")
        table[col] = table[col].map(lambda v: v.decode() if isinstance(v, bytes) else v)
    if "status" not in table.columns:
        table["status"] = lg.OK
    table["status"] = table["status"].map(lambda v: v.decode() if isinstance(v, bytes) else str(v))

    failed = table["status"] == lg.FAILED
    capped = table["status"] == lg.CAPPED
    dropped = failed | (capped & (not include_capped))
    excluded = table[dropped].copy()
    if "status_reason" not in excluded.columns:
        excluded["status_reason"] = ""
    excluded.loc[capped[dropped], "status_reason"] = (
        "hit its step cap before early stopping: not a data-limited optimum (load_grid(include_capped=True) keeps it)")
    if failed.any():
        rows = excluded[failed[dropped]]
        warnings.warn(
            f"{int(failed.sum())} failed run(s) excluded from the grid (see Grid.excluded): "
            + "; ".join(f"run {r}: {why}" for r, why in zip(rows["run"][:_MAX_LISTED], rows["status_reason"].astype(str)[:_MAX_LISTED])),
            stacklevel=4,
        )
    if (capped & dropped).any():
        warnings.warn(
            f"{int((capped & dropped).sum())} capped run(s) excluded from the grid (they hit their step cap before "
            f"early stopping, so their loss is not the data-limited optimum; include_capped=True keeps them): "
            f"{_rows(table, capped & dropped)}",
            stacklevel=4,
        )
    table = table[~dropped].reset_index(drop=True)
    if len(table) == 0:
        raise GridError("grid is empty: every run was excluded (failed or capped)")
    if (capped & ~dropped).any():
        warnings.warn(
            f"{int(capped.sum())} run(s) hit their step cap before early stopping (status 'capped'): "
            "their losses may overstate the data-limited loss; kept",
            stacklevel=4,
        )

    for col in NUMERIC:
        values = pd.to_numeric(table[col], errors="coerce")
        bad = values.isna() & table[col].notna()
        if bad.any() or table[col].dtype == bool:
            raise GridError(f"column {col!r} must be numeric; non-numeric values at {_rows(table, bad)}")
        table[col] = values.astype(float)
    for col in ("n_params", "data_tokens", "loss"):
        v = table[col].to_numpy()
        bad = ~np.isfinite(v) | (v <= 0)
        if bad.any():
            raise GridError(f"column {col!r} must be finite and positive; bad values at {_rows(table, bad, col)}")
    p = table["pretrain_tokens"].to_numpy()
    bad = ~np.isfinite(p) | (p < 0)
    if bad.any():
        raise GridError(f"column 'pretrain_tokens' must be finite and >= 0; bad values at {_rows(table, bad, 'pretrain_tokens')}")
    bad = (table["source"] == SCRATCH) & (table["pretrain_tokens"] > 0)
    if bad.any():
        raise GridError(f"scratch runs (source 'none') with pretrain_tokens > 0 at {_rows(table, bad, 'pretrain_tokens')}")
    bad = ~np.isfinite(table["seed"].to_numpy())
    if bad.any():
        raise GridError(f"column 'seed' must be finite; bad values at {_rows(table, bad, 'seed')}")
    table["seed"] = table["seed"].astype(np.int64)

    notes = list(attrs.get("notes", []))
    if units == "bits":
        table["loss"] = table["loss"] * math.log(2)
        if curves is not None:
            curves = curves.copy()
            for name in lg.LOSS_CURVES:
                if name in curves:
                    curves[name] = curves[name] * math.log(2)
        notes.append("losses converted from bits to nats (x ln 2)")
        warnings.warn("grid losses are in bits: converted to nats (x ln 2)", stacklevel=3)
    ceiling = math.log(vocab_size)
    bad = table["loss"] > ceiling
    if bad.any():
        raise GridError(
            f"losses above ln(vocab_size) = {ceiling:.3f} nats (a uniform guess over {vocab_size} tokens) at "
            f"{_rows(table, bad, 'loss')}: wrong units (bits declared as nats?) or wrong vocab_size"
        )

    dup = table.duplicated(list(CELL), keep=False)
    if dup.any():
        raise GridError(f"duplicated runs (same {', '.join(CELL)}) at {_rows(table, dup)}")

    if curves is not None and dropped.any():
        curves = curves.isel(run=np.flatnonzero(~dropped.to_numpy()))
    attrs = {**attrs, lg.ATTR_LOSS_UNITS: lg.NATS, lg.ATTR_VOCAB_SIZE: vocab_size}
    if notes:
        attrs["notes"] = notes
    return Grid(runs=table, curves=curves, attrs=attrs, excluded=excluded.reset_index(drop=True), sha256=_hash(table))


def _rows(table: pd.DataFrame, mask, col: str | None = None) -> str:
    idx = np.flatnonzero(np.asarray(mask))
    shown = []
    for i in idx[:_MAX_LISTED]:
        label = f"run {table['run'].iloc[i]}"
        shown.append(f"{label} ({col}={table[col].iloc[i]!r})" if col else label)
    more = f" and {len(idx) - _MAX_LISTED} more" if len(idx) > _MAX_LISTED else ""
    return ", ".join(shown) + more


def _hash(table: pd.DataFrame) -> str:
    """sha256 of the run table's identifying content, independent of row order."""
    cols = list(CELL) + ["loss"]
    canon = table[cols].sort_values(cols).to_csv(index=False, float_format="%.17g")
    return hashlib.sha256(canon.encode()).hexdigest()


def runs_to_dataset(grid: Grid) -> xr.Dataset:
    """The run table as a Dataset over ``grid_run`` (how fit files carry their grid)."""
    data = {}
    for c in grid.runs.columns:
        col = grid.runs[c]
        data[c] = (lg.GRID_RUN, col.astype(str).to_numpy() if col.dtype == object else col.to_numpy())
    return xr.Dataset(data)


def grid_from_dataset(ds: xr.Dataset, attrs: dict, sha256: str) -> Grid:
    """Inverse of ``runs_to_dataset``: the grid a fit file was made from, checked against its hash."""
    table = pd.DataFrame({name: var.values for name, var in ds.data_vars.items()})
    grid = _finish(table, "nats", attrs.get("vocab_size"), attrs, None)
    if grid.sha256 != sha256:
        raise GridError("the grid stored in this fit file does not match its recorded sha256")
    return grid
