"""Reading a grid's run records back: status, and the loss-grid netCDF
(the contract of loss_grid.py) with its provenance."""
from __future__ import annotations

import json
import math
import platform
from pathlib import Path

from trainer.data import source_mix
from trainer.files import atomic_write
from trainer.provenance import code_version
from trainer.scheduler import read_record
from trainer.spec import SCRATCH, SpecError


def _specs(out: Path) -> dict[str, dict]:
    specs = {}
    for p in sorted((Path(out) / "specs").glob("*.json")):
        try:
            info = json.loads(p.read_text())
            specs[info["name"]] = info
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise SpecError(f"spec record {p} is damaged ({type(e).__name__}); run `grid run` with its spec again "
                            f"to rewrite it") from None
    return specs


def status(out: Path) -> list[dict]:
    """Per spec recorded in out: total runs and how many are ok/capped/failed/pending/damaged."""
    out = Path(out)
    rows = []
    for name, info in _specs(out).items():
        counts: dict[str, int] = {}
        for rid in info["run_ids"]:
            p = out / "runs" / f"{rid}.json"
            if not p.exists():
                st = "pending"
            else:
                rec = read_record(p)
                st = rec["result"]["status"] if rec else "damaged"
            counts[st] = counts.get(st, 0) + 1
        rows.append(dict(spec=name, total=len(info["run_ids"]), **counts))
    return rows


def load_results(out: Path, spec_name: str | None = None) -> tuple[list[dict], dict]:
    """The readable run records of one spec in out (all runs if the directory
    holds a single spec), and the spec record."""
    out = Path(out)
    if not out.is_dir():
        raise SpecError(f"{out} is not a directory")
    specs = _specs(out)
    if not specs:
        raise SpecError(f"{out} holds no grid (no specs/ directory): run `transfer-train grid run` first")
    if spec_name is None:
        if len(specs) > 1:
            raise SpecError(f"{out} holds several grids ({', '.join(sorted(specs))}): choose one with --spec")
        spec_name = next(iter(specs))
    if spec_name not in specs:
        raise SpecError(f"{out} holds no grid named {spec_name!r} (has: {', '.join(sorted(specs))})")
    info = specs[spec_name]
    recs = []
    for rid in info["run_ids"]:
        p = out / "runs" / f"{rid}.json"
        if p.exists() and (rec := read_record(p)) is not None:
            recs.append(rec)
    return recs, info


def export(out: Path, dest: Path, spec_name: str | None = None) -> dict:
    """Write the loss-grid netCDF from the finished runs of one spec."""
    import numpy as np
    import xarray as xr

    recs, info = load_results(out, spec_name)
    if not recs:
        raise SpecError(f"{out}: no finished runs of grid {info['name']!r} to export")
    recs.sort(key=lambda r: r["run_id"])
    n_eval = max(len(r["result"]["curve_tokens"]) for r in recs)

    def pad(key):
        a = np.full((len(recs), n_eval), np.nan)
        for i, r in enumerate(recs):
            v = r["result"][key]
            a[i, :len(v)] = v
        return a

    cells = [r["cell"] for r in recs]
    res = [r["result"] for r in recs]
    ints = lambda vals: np.array(vals, dtype=np.int64)  # noqa: E731
    coords = dict(
        run=np.array([r["run_id"] for r in recs]),
        target=("run", np.array([c["target"] for c in cells])),
        source=("run", np.array([c["source"] for c in cells])),
        n_params=("run", ints([r["n_params"] for r in recs])),
        n_layer=("run", ints([c["n_layer"] for c in cells])),
        d_model=("run", ints([c["d_model"] for c in cells])),
        pretrain_tokens=("run", ints([c["pretrain_tokens"] for c in cells])),
        data_tokens=("run", ints([c["data_tokens"] for c in cells])),
        seed=("run", ints([c["seed"] for c in cells])),
        pretrain_run=("run", np.array([c.get("pretrain_run", "") for c in cells])),
    )
    data = dict(
        loss=("run", np.array([x["loss"] for x in res], dtype=np.float64)),
        loss_select=("run", np.array([x.get("loss_select", x["loss"]) for x in res], dtype=np.float64)),
        best_step=("run", ints([x["best_step"] for x in res])),
        curve_tokens=(("run", "eval"), pad("curve_tokens")),
        curve_loss=(("run", "eval"), pad("curve_loss")),
        train_loss=(("run", "eval"), pad("train_loss")),
        status=("run", np.array([x["status"] for x in res])),
        status_reason=("run", np.array([x["status_reason"] for x in res])),
        tokens_seen=("run", ints([x["tokens_seen"] for x in res])),
    )
    manifests = {json.dumps(r["provenance"]["manifest"], sort_keys=True) for r in recs}
    if len(manifests) > 1:
        raise SpecError(f"{out}: runs of grid {info['name']!r} were trained on different corpus builds")
    manifest = json.loads(manifests.pop())
    devices = sorted({x["device"] for x in res})
    # A group's wall time is shared by its members: count each group once.
    walls = {(x["group_wall_s"], x["device"], x["group_size"]) for x in res}
    pre = _pretrain_records(out, recs)
    pre_walls = {(p["wall_s"], p["device"]) for p in pre.values()}  # a packed group's wall, once
    attrs = {
        "loss_units": "nats", "token": "byte", "vocab_size": 256,
        "corpus_names": json.dumps(sorted({c["target"] for c in cells} | {
            n for c in cells if c["source"] != SCRATCH for n in source_mix(c["source"])})),
        "corpus_manifest": json.dumps(manifest, sort_keys=True),
        # the commits the runs were trained with (recorded per run), then the exporter's
        "code_version": ", ".join(sorted({r["provenance"].get("code_version", "unrecorded") for r in recs})),
        "export_code_version": code_version(),
        "hardware": ", ".join(devices),
        "exported_on": platform.node() or "unknown",
        "wall_time_s": float(sum(w[0] for w in walls)),
        # core-seconds: a CPU group runs on one thread (one core) per process
        "core_hours": (sum(w[0] for w in walls) + sum(w for w, _ in pre_walls)) / 3600,
        "spec": info["text"],
        "spec_name": info["name"],
        "pretrain": json.dumps(pre, sort_keys=True),
        "runs_expected": len(info["run_ids"]),
    }
    ds = xr.Dataset(data, coords=coords, attrs=attrs)
    atomic_write(dest, lambda t: ds.to_netcdf(t, engine="h5netcdf"))
    return dict(runs=len(recs), expected=len(info["run_ids"]), path=str(dest))


def _pretrain_records(out: Path, recs: list[dict]) -> dict:
    """Final source validation loss, tokens and wall time of each pre-training
    run the exported runs start from."""
    jobs = sorted({r["pretrain_job"] for r in recs if r.get("pretrain_job")})
    outp = {}
    for j in jobs:
        p = Path(out) / "pretrain" / j / "result.json"
        if p.exists() and (rec := read_record(p)) is not None:
            r = rec["result"]
            outp[j] = dict(final_val_loss=r["curve_loss"][-1] if r["curve_loss"] else math.nan,
                           tokens=r["tokens_seen"], wall_s=r["group_wall_s"],
                           device=r["device"])
    return outp


__all__ = ["status", "load_results", "export"]
