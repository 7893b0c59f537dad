"""Loading and validating loss grids: the one in-memory form the fits read.

A grid arrives as the trainer's netCDF (dims ``run``, ``eval``; the
contract is ``loss_grid``, described in docs/loss_grid.md) or as a plain
table (DataFrame or CSV with ``n_params``, ``data_tokens``, ``loss`` and
optional ``source``, ``target``, ``pretrain_tokens``, ``seed``, ``status``).
Either way it is checked and becomes a ``Grid``. Bad input raises
``GridError`` naming the column, the rows and the problem; nothing is
dropped without a warning.

What the numbers mean (loss units, metric, what the data counts) is
declared by the grid's attributes: a netCDF's, a DataFrame's ``attrs``, or
a CSV's leading ``# key: value`` lines; arguments fill in what is not
declared and must not contradict what is.
"""

from __future__ import annotations

import hashlib
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

import loss_grid as lg
from loss_grid import CELL, NUMERIC, REQUIRED, SCRATCH

_MAX_LISTED = 8
# Wide physical ranges: anything outside is a unit or typing mistake, not a model.
_RANGES = {lg.N_PARAMS: (1e2, 1e14), lg.DATA_TOKENS: (1.0, 1e16), lg.PRETRAIN_TOKENS: (0.0, 1e16)}
# Without a declared vocabulary a cross-entropy is bounded by a uniform guess
# over the largest vocabularies in use (about a million tokens).
_MAX_VOCAB = 1_000_000
_ATTR_KEY = re.compile(r"^[a-z][a-z0-9_]*$")


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
    ``attrs`` say what the numbers mean: losses are held in nats
    (cross-entropy) or as a fraction (error rate); see ``loss_label`` and
    ``data_label``.
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

    @property
    def metric(self) -> str:
        return self.attrs.get(lg.ATTR_METRIC, lg.CROSS_ENTROPY)

    @property
    def data_unit(self) -> str:
        return self.attrs.get(lg.ATTR_DATA_UNIT, lg.TOKENS)

    @property
    def data_label(self) -> str:
        """What one unit of ``data_tokens`` is, plural: "bytes", "tokens", "images", "examples"."""
        if self.data_unit == lg.TOKENS and self.attrs.get(lg.ATTR_TOKEN) == lg.BYTE:
            return "bytes"
        return self.data_unit

    @property
    def loss_unit(self) -> str:
        """The unit of ``loss`` as held: "nats/byte", "nats/token" or "fraction"."""
        if self.metric == lg.ERROR_RATE:
            return "fraction"
        return "nats/byte" if self.data_label == "bytes" else "nats/token"

    @property
    def loss_label(self) -> str:
        """The loss and its unit as held, e.g. "cross-entropy (nats/byte)" or "error rate (fraction)"."""
        return f"{'error rate' if self.metric == lg.ERROR_RATE else 'cross-entropy'} ({self.loss_unit})"

    def __len__(self) -> int:
        return len(self.runs)

    def __repr__(self) -> str:
        units = "" if self.metric == lg.CROSS_ENTROPY and self.data_unit == lg.TOKENS else \
            f"; loss {self.loss_label}, data in {self.data_label}"
        return (
            f"Grid({len(self.runs)} runs: {len(self.scratch)} scratch, {len(self.finetuned)} fine-tuned; "
            f"targets {self.targets}, pairs {[pair_name(s, t) for s, t in self.pairs]}{units}; sha256 {self.sha256[:12]})"
        )


pair_name = lg.pair_label


def load_grid(x, *, units: str | None = None, metric: str | None = None, data_unit: str | None = None,
              vocab_size: int | None = None, include_capped: bool = False) -> Grid:
    """Read and validate a loss grid.

    ``x``: a path (.nc or .csv), an ``xarray.Dataset``, a ``pandas.DataFrame``
    or a ``Grid`` (returned unchanged).

    What the numbers mean comes from the grid's attributes (a netCDF's, a
    DataFrame's ``attrs``, a CSV's leading ``# key: value`` lines); the
    arguments say it where the grid does not, and must agree where it does:

    - ``units``: "nats" or "bits" (cross-entropy), "fraction" or "percent"
      (error rate). A netCDF must declare it; a table defaults to nats (or
      fraction for an error rate). Bits and percent are converted, with a
      warning and a note in ``Grid.attrs``.
    - ``metric``: "cross_entropy" (default) or "error_rate".
    - ``data_unit``: what ``data_tokens``/``pretrain_tokens`` count:
      "tokens" (default), "examples" or "images".
    - ``vocab_size``: a grid that declares a vocabulary (``vocab_size``, or
      ``token`` = "byte": 256) has losses above ln(vocab_size) refused; one
      that declares none is held to a uniform guess over a million tokens.

    Runs with status "failed" are excluded. So are runs with status "capped"
    (they hit a step cap before early stopping, so their loss is not the
    data-limited optimum the laws describe) unless ``include_capped``. Every
    excluded run is listed in ``Grid.excluded`` with its reason, and warned of.
    """
    if isinstance(x, Grid):
        return x
    given = {lg.ATTR_LOSS_UNITS: units, lg.ATTR_METRIC: metric, lg.ATTR_DATA_UNIT: data_unit,
             lg.ATTR_VOCAB_SIZE: vocab_size}
    given = {k: v for k, v in given.items() if v is not None}
    if isinstance(x, (str, Path)):
        path = Path(x)
        if not path.exists():
            raise GridError(f"no such grid file: {path}")
        if path.is_dir():
            raise GridError(f"{path} is a directory, not a grid file (.nc or .csv)")
        if path.suffix == ".nc":
            try:
                with xr.open_dataset(path, engine="h5netcdf") as ds:
                    ds = ds.load()
            except (OSError, ValueError) as e:
                raise GridError(f"cannot read {path} as a netCDF loss grid: {_first_line(e)}") from None
            return _from_dataset(ds, given, include_capped, netcdf=True)
        if path.suffix == ".csv":
            table, attrs = _read_csv(path)
            return _from_table(table, {**attrs, lg.ATTR_SOURCE_FILE: path.name}, given, include_capped)
        raise GridError(f"grid file {path} is neither .nc nor .csv")
    if isinstance(x, xr.Dataset):
        return _from_dataset(x, given, include_capped, netcdf=True)
    if isinstance(x, pd.DataFrame):
        return _from_table(x, dict(x.attrs), given, include_capped)
    raise GridError(f"cannot read a grid from a {type(x).__name__}; give a path, xarray.Dataset or DataFrame")


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _read_csv(path: Path) -> tuple[pd.DataFrame, dict]:
    """A CSV table and the attributes declared in its leading ``# key: value`` lines."""
    attrs, n_header = {}, 0
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if not line.startswith("#"):
                    break
                n_header += 1
                body = line[1:].strip()
                if not body:
                    continue
                key, sep, value = body.partition(":")
                key = key.strip()
                if not sep or not _ATTR_KEY.match(key):
                    raise GridError(f"{path} line {n_header}: a header line must read '# key: value', got {line.strip()!r}")
                attrs[key] = value.strip()
        with warnings.catch_warnings():
            # index_col=False: a row longer than the header is an error, not a silent shift into an index
            warnings.simplefilter("error", pd.errors.ParserWarning)
            table = pd.read_csv(path, skiprows=n_header, index_col=False)
    except pd.errors.ParserWarning:
        raise GridError(f"{path} is not a well-formed CSV table: some rows have more fields than the header") from None
    except UnicodeDecodeError:
        raise GridError(f"{path} is not a UTF-8 text table (a binary file?)") from None
    except pd.errors.EmptyDataError:
        raise GridError(f"{path} is empty: no header, no runs") from None
    except pd.errors.ParserError as e:
        raise GridError(f"{path} is not a well-formed CSV table: {_first_line(e)}") from None
    return table, attrs


def _from_dataset(ds: xr.Dataset, given: dict, include_capped=False, netcdf=False) -> Grid:
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
    if netcdf and lg.ATTR_LOSS_UNITS not in ds.attrs and lg.ATTR_LOSS_UNITS not in given:
        raise GridError("grid dataset has no 'loss_units' attribute; pass units='nats' or units='bits'")
    curve_vars = [n for n, v in ds.data_vars.items() if lg.EVAL in v.dims]
    curves = ds[curve_vars] if curve_vars else None
    return _finish(table, _declare(dict(ds.attrs), given), curves, include_capped)


def _from_table(df: pd.DataFrame, attrs: dict, given: dict, include_capped=False) -> Grid:
    table = df.copy()
    missing = [c for c in REQUIRED if c not in table.columns]
    if missing:
        raise GridError(f"grid table lacks required column(s) {missing}; it has {list(table.columns)}")
    notes = []
    if lg.SOURCE not in table.columns:
        table[lg.SOURCE] = SCRATCH
    if lg.TARGET not in table.columns:
        table[lg.TARGET] = "target"
    if lg.PRETRAIN_TOKENS not in table.columns:
        table[lg.PRETRAIN_TOKENS] = 0
        if (table[lg.SOURCE].astype(str) != SCRATCH).any():
            notes.append("no pretrain_tokens column: pre-training amounts unknown (set to 0)")
    if lg.SEED not in table.columns:
        table[lg.SEED] = 0
    if lg.RUN not in table.columns:
        table.insert(0, lg.RUN, np.arange(len(table)))
    attrs = _declare(attrs, given)
    if notes:
        attrs[lg.ATTR_NOTES] = notes
    return _finish(table, attrs, None, include_capped)


def _declare(attrs: dict, given: dict) -> dict:
    """The grid's declared attributes completed by the caller's, checked and defaulted."""
    attrs = dict(attrs)
    for key, value in given.items():
        declared = attrs.get(key)
        if declared is not None and str(declared) != str(value):
            raise GridError(f"the grid declares {key}={declared!r} but {key}={value!r} was given")
        attrs[key] = value
    metric = attrs.setdefault(lg.ATTR_METRIC, lg.CROSS_ENTROPY)
    if metric not in lg.METRICS:
        raise GridError(f"unknown metric {metric!r}; expected one of {lg.METRICS}")
    units = attrs.setdefault(lg.ATTR_LOSS_UNITS, lg.CANONICAL_UNITS[metric])
    if units not in lg.UNITS_OF_METRIC[metric]:
        known = units in lg.LOSS_UNITS
        raise GridError(f"{'loss units' if known else 'unknown loss units'} {units!r} "
                        f"{'do not fit' if known else 'for'} metric {metric!r}; expected one of "
                        f"{lg.UNITS_OF_METRIC[metric]}")
    data_unit = attrs.setdefault(lg.ATTR_DATA_UNIT, lg.TOKENS)
    if data_unit not in lg.DATA_UNITS:
        raise GridError(f"unknown data unit {data_unit!r}; expected one of {lg.DATA_UNITS}")
    vocab = attrs.get(lg.ATTR_VOCAB_SIZE)
    if vocab is None and attrs.get(lg.ATTR_TOKEN) == lg.BYTE:
        vocab = 256
    if vocab is not None:
        try:
            vocab = int(str(vocab))
        except ValueError:
            vocab = 0
        if vocab < 2:
            raise GridError(f"vocab_size must be an integer >= 2, got {attrs.get(lg.ATTR_VOCAB_SIZE)!r}")
        attrs[lg.ATTR_VOCAB_SIZE] = vocab
    return attrs


def _finish(table: pd.DataFrame, attrs: dict, curves, include_capped=True) -> Grid:
    if len(table) == 0:
        raise GridError("grid is empty: no runs")
    table = table.reset_index(drop=True)
    for col in (lg.TARGET, lg.SOURCE):
        bad = table[col].isna() | ~table[col].map(lambda v: isinstance(v, (str, bytes)))
        if bad.any():
            raise GridError(f"column {col!r} must hold strings; bad values at {_rows(table, bad, col)}")
        table[col] = table[col].map(lambda v: v.decode() if isinstance(v, bytes) else v)
        values = table[col]
        bad = (values != values.str.strip()) | (values == "") | values.str.contains(lg.PAIR_SEP, regex=False)
        if bad.any():
            raise GridError(f"column {col!r}: empty names, names with leading/trailing spaces or containing "
                            f"{lg.PAIR_SEP!r} at {_rows(table, bad, col)}")
    if lg.STATUS not in table.columns:
        table[lg.STATUS] = lg.OK
    table[lg.STATUS] = table[lg.STATUS].map(lambda v: v.decode() if isinstance(v, bytes) else str(v))
    bad = ~table[lg.STATUS].isin(lg.STATUSES)
    if bad.any():
        raise GridError(f"column 'status' must be one of {lg.STATUSES}; bad values at {_rows(table, bad, lg.STATUS)}")

    failed = table[lg.STATUS] == lg.FAILED
    capped = table[lg.STATUS] == lg.CAPPED
    dropped = failed | (capped & (not include_capped))
    excluded = table[dropped].copy()
    if lg.STATUS_REASON not in excluded.columns:
        excluded[lg.STATUS_REASON] = ""
    excluded.loc[capped[dropped], lg.STATUS_REASON] = (
        "hit its step cap before early stopping: not a data-limited optimum (load_grid(include_capped=True) keeps it)")
    if failed.any():
        rows = excluded[failed[dropped]]
        warnings.warn(
            f"{int(failed.sum())} failed run(s) excluded from the grid (see Grid.excluded): "
            + "; ".join(f"run {r}: {why}" for r, why in zip(rows[lg.RUN][:_MAX_LISTED], rows[lg.STATUS_REASON].astype(str)[:_MAX_LISTED])),
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
        raw = table[col]
        values = pd.to_numeric(raw, errors="coerce")
        bad = values.isna() & raw.notna()
        if bad.any() or raw.dtype == bool:
            raise GridError(f"column {col!r} must be numeric; non-numeric values at {_rows(table, bad, col)}")
        table[col] = values.astype(float)
    for col in (lg.N_PARAMS, lg.DATA_TOKENS, lg.LOSS):
        v = table[col].to_numpy()
        bad = ~np.isfinite(v) | (v <= 0)
        if bad.any():
            raise GridError(f"column {col!r} must be finite and positive (missing values count as bad); "
                            f"bad values at {_rows(table, bad, col)}")
    p = table[lg.PRETRAIN_TOKENS].to_numpy()
    bad = ~np.isfinite(p) | (p < 0)
    if bad.any():
        raise GridError(f"column 'pretrain_tokens' must be finite and >= 0; bad values at {_rows(table, bad, 'pretrain_tokens')}")
    data_unit = attrs[lg.ATTR_DATA_UNIT]
    for col, (lo, hi) in _RANGES.items():
        v = table[col].to_numpy()
        bad = (v < lo) | (v > hi)
        if bad.any():
            what = "parameters" if col == lg.N_PARAMS else data_unit
            raise GridError(f"column {col!r} outside the plausible range {lo:g} to {hi:g} {what} at "
                            f"{_rows(table, bad, col)}: a unit or typing mistake?")
    bad = (table[lg.SOURCE] == SCRATCH) & (table[lg.PRETRAIN_TOKENS] > 0)
    if bad.any():
        raise GridError(f"scratch runs (source 'none') with pretrain_tokens > 0 at {_rows(table, bad, 'pretrain_tokens')}")
    seed = table[lg.SEED].to_numpy()
    bad = ~np.isfinite(seed) | (seed != np.round(seed)) | (np.abs(seed) > 2**62)
    if bad.any():
        raise GridError(f"column 'seed' must hold integers; bad values at {_rows(table, bad, 'seed')}")
    table[lg.SEED] = table[lg.SEED].astype(np.int64)

    table, curves, attrs = _to_canonical_units(table, curves, attrs)

    # Where runs repeat their data, the passes made are part of the design (Muennighoff et al.'s grid).
    # and runs of one cell fine-tuned from different pre-training runs (their seeds) are different runs.
    identity = list(CELL) + [c for c in (lg.TOKENS_SEEN, lg.PRETRAIN_RUN) if c in table.columns]
    dup = table.duplicated(identity, keep=False)
    if dup.any():
        raise GridError(f"duplicated runs (same {', '.join(identity)}) at {_rows(table, dup)}")

    if curves is not None and dropped.any():
        curves = curves.isel(run=np.flatnonzero(~dropped.to_numpy()))
    return Grid(runs=table, curves=curves, attrs=attrs, excluded=excluded.reset_index(drop=True), sha256=_hash(table))


def _to_canonical_units(table: pd.DataFrame, curves, attrs: dict):
    """Losses in nats (cross-entropy) or as a fraction (error rate), checked against what is possible."""
    metric, units = attrs[lg.ATTR_METRIC], attrs[lg.ATTR_LOSS_UNITS]
    notes = list(attrs.get(lg.ATTR_NOTES, []))
    scale = {lg.BITS: math.log(2), lg.PERCENT: 0.01}.get(units)
    if scale is not None:
        table[lg.LOSS] = table[lg.LOSS] * scale
        if curves is not None:
            curves = curves.copy()
            for name in lg.LOSS_CURVES:
                if name in curves:
                    curves[name] = curves[name] * scale
        how = "bits to nats (x ln 2)" if units == lg.BITS else "percent to a fraction (/ 100)"
        notes.append(f"losses converted from {how}")
        warnings.warn(f"grid losses are in {units}: converted from {how}", stacklevel=4)
    loss = table[lg.LOSS]
    if metric == lg.ERROR_RATE:
        bad = loss > 1
        if bad.any():
            raise GridError(f"error rates above 1 at {_rows(table, bad, 'loss')}: percentages declared as a "
                            "fraction? (units='percent')")
    else:
        vocab = attrs.get(lg.ATTR_VOCAB_SIZE)
        ceiling = math.log(vocab or _MAX_VOCAB)
        bad = loss > ceiling
        if bad.any():
            why = (f"ln(vocab_size) = {ceiling:.3f} nats (a uniform guess over {vocab} tokens)" if vocab else
                   f"{ceiling:.3f} nats (a uniform guess over {_MAX_VOCAB:,} tokens; no vocab_size declared)")
            raise GridError(f"losses above {why} at {_rows(table, bad, 'loss')}: wrong units (bits declared as "
                            "nats?) or wrong vocab_size")
    attrs = {**attrs, lg.ATTR_LOSS_UNITS: lg.CANONICAL_UNITS[metric]}
    if notes:
        attrs[lg.ATTR_NOTES] = notes
    return table, curves, attrs


def _plain(value) -> str:
    """A value as a user wrote it: 1e+300, nan, 'text' (never np.float64(nan))."""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, float, np.integer, np.floating)):
        return f"{float(value):g}" if isinstance(value, (float, np.floating)) else str(int(value))
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "missing"
    return repr(str(value))


def _rows(table: pd.DataFrame, mask, col: str | None = None) -> str:
    idx = np.flatnonzero(np.asarray(mask))
    shown = []
    for i in idx[:_MAX_LISTED]:
        label = f"run {table['run'].iloc[i]}"
        shown.append(f"{label} ({col}={_plain(table[col].iloc[i])})" if col else label)
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
    grid = _finish(table, _declare(attrs, {}), None)
    if grid.sha256 != sha256:
        raise GridError("the grid stored in this fit file does not match its recorded sha256")
    return grid
