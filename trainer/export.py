"""Reading a grid's run records back: status, and the loss-grid netCDF
(the contract of loss_grid.py) with its provenance."""
from __future__ import annotations

import json
import math
import tomllib
from pathlib import Path

from trainer.data import source_mix
from trainer.files import atomic_write
from trainer.provenance import code_version
from trainer.scheduler import RunDir, read_record, saved_states
from trainer.spec import SCRATCH, SpecError, parse_spec, union_spec


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
    """Per spec recorded in out: total runs and how many are ok/capped/failed/pending/damaged,
    how many pending ones have saved state to resume from (``saved``), its
    pre-training runs finished of all (``pretrain``: "done/total"), and the ids
    of the runs not finished (``pending_runs``: pending or damaged)."""
    out = Path(out)
    saved = {rid for s in saved_states(out) for rid in s["runs"]}
    rows = []
    for name, info in _specs(out).items():
        counts: dict[str, int] = {}
        left = []
        for rid in info["run_ids"]:
            p = out / "runs" / f"{rid}.json"
            if not p.exists():
                st = "pending"
            else:
                rec = read_record(p)
                st = rec["result"]["status"] if rec else "damaged"
            counts[st] = counts.get(st, 0) + 1
            if st in ("pending", "damaged"):
                left.append(rid)
        rows.append(dict(spec=name, total=len(info["run_ids"]), **counts,
                         saved=sum(rid in saved for rid in info["run_ids"]), pretrain=_pretrain_done(out, info),
                         pending_runs=left))
    return rows


def _pretrain_done(out: Path, info: dict) -> str:
    """"done/total" of a recorded spec's pre-training runs ("-" where its text is not recorded)."""
    if not info.get("text"):
        return "-"
    spec = parse_spec(tomllib.loads(info["text"]), info["text"], default_name=info["name"])
    rd = RunDir(spec, out, None, 1)
    return f"{sum(rd.job_done(j) for j in spec.pretrain_jobs)}/{len(spec.pretrain_jobs)}"


def load_results(out: Path, spec_name: str | list[str] | None = None,
                 union_name: str = "union") -> tuple[list[dict], dict]:
    """The readable run records of one spec in out (all runs if the directory
    holds a single spec), and the spec record. Several spec names: the union
    of their runs, as one spec of [[run]] tables named `union_name`."""
    if isinstance(spec_name, (list, tuple)) and len(spec_name) > 1:
        parts = [load_results(out, n) for n in spec_name]
        for _, info in parts:
            if not info.get("text"):
                raise SpecError(f"grid {info['name']!r} was recorded without its spec's text; it cannot be merged")
        specs = [parse_spec(tomllib.loads(info["text"]), info["text"], default_name=info["name"])
                 for _, info in parts]
        recs = list({r["run_id"]: r for rs, _ in parts for r in rs}.values())
        run_ids = list(dict.fromkeys(rid for _, info in parts for rid in info["run_ids"]))
        return recs, dict(name=union_name, text=union_spec(specs, union_name), run_ids=run_ids)
    if isinstance(spec_name, (list, tuple)):
        spec_name = spec_name[0] if spec_name else None
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


def export(out: Path, dest: Path, spec_name: str | list[str] | None = None) -> dict:
    """Write the loss-grid netCDF from the finished runs of one spec, or of
    the union of several (one grid, named after `dest`, whose spec lists
    every cell: fit two sources jointly from grids that share scratch runs)."""
    import numpy as np
    import xarray as xr

    import loss_grid as lg

    recs, info = load_results(out, spec_name, union_name=Path(dest).stem)
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
    coords = {
        lg.RUN: np.array([r["run_id"] for r in recs]),
        lg.TARGET: (lg.RUN, np.array([c["target"] for c in cells])),
        lg.SOURCE: (lg.RUN, np.array([c["source"] for c in cells])),
        lg.N_PARAMS: (lg.RUN, ints([r["n_params"] for r in recs])),
        lg.N_LAYER: (lg.RUN, ints([c["n_layer"] for c in cells])),
        lg.D_MODEL: (lg.RUN, ints([c["d_model"] for c in cells])),
        lg.PRETRAIN_TOKENS: (lg.RUN, ints([c["pretrain_tokens"] for c in cells])),
        lg.DATA_TOKENS: (lg.RUN, ints([c["data_tokens"] for c in cells])),
        lg.SEED: (lg.RUN, ints([c["seed"] for c in cells])),
        lg.PRETRAIN_RUN: (lg.RUN, np.array([c.get("pretrain_run", "") for c in cells])),
    }
    data = {
        lg.LOSS: (lg.RUN, np.array([x["loss"] for x in res], dtype=np.float64)),
        lg.LOSS_SELECT: (lg.RUN, np.array([x.get("loss_select", x["loss"]) for x in res], dtype=np.float64)),
        lg.BEST_STEP: (lg.RUN, ints([x["best_step"] for x in res])),
        **{k: ((lg.RUN, lg.EVAL), pad(k)) for k in lg.CURVES},
        lg.STATUS: (lg.RUN, np.array([x["status"] for x in res])),
        lg.STATUS_REASON: (lg.RUN, np.array([x["status_reason"] for x in res])),
        lg.TOKENS_SEEN: (lg.RUN, ints([x["tokens_seen"] for x in res])),
    }
    manifests = {json.dumps(r["provenance"]["manifest"], sort_keys=True) for r in recs}
    if len(manifests) > 1:
        raise SpecError(f"{out}: runs of grid {info['name']!r} were trained on different corpus builds")
    manifest = json.loads(manifests.pop())
    devices = sorted({x["device"] for x in res})
    pre = _pretrain_records(out, recs)
    run_s, pre_s = _core_seconds(res, pre)
    attrs = {
        lg.ATTR_LOSS_UNITS: lg.NATS, lg.ATTR_TOKEN: lg.BYTE, lg.ATTR_VOCAB_SIZE: 256,
        lg.ATTR_CORPUS_NAMES: json.dumps(sorted({c["target"] for c in cells} | {
            n for c in cells if c["source"] != SCRATCH for n in source_mix(c["source"])})),
        lg.ATTR_CORPUS_MANIFEST: json.dumps(manifest, sort_keys=True),
        # the commits the runs were trained with (recorded per run), then the exporter's
        lg.ATTR_CODE_VERSION: ", ".join(sorted({r["provenance"].get("code_version", "unrecorded") for r in recs})),
        lg.ATTR_EXPORT_CODE_VERSION: code_version(),
        lg.ATTR_HARDWARE: ", ".join(devices),
        lg.ATTR_WALL_TIME_S: float(run_s),
        lg.ATTR_CORE_HOURS: (run_s + pre_s) / 3600,
        lg.ATTR_SPEC: info["text"],
        lg.ATTR_SPEC_NAME: info["name"],
        lg.ATTR_PRETRAIN: json.dumps(pre, sort_keys=True),
        lg.ATTR_RUNS_EXPECTED: len(info["run_ids"]),
    }
    ds = xr.Dataset(data, coords=coords, attrs=attrs)
    atomic_write(dest, lambda t: ds.to_netcdf(t, engine="h5netcdf"))
    return dict(runs=len(recs), expected=len(info["run_ids"]), path=str(dest))


def _pretrain_records(out: Path, recs: list[dict]) -> dict:
    """Final source validation loss, tokens, wall time and seed of each
    pre-training run the exported runs start from."""
    jobs = sorted({r["pretrain_job"] for r in recs if r.get("pretrain_job")})
    outp = {}
    for j in jobs:
        p = Path(out) / "pretrain" / j / "result.json"
        if p.exists() and (rec := read_record(p)) is not None:
            r = rec["result"]
            outp[j] = dict(final_val_loss=r["curve_loss"][-1] if r["curve_loss"] else math.nan,
                           tokens=r["tokens_seen"], wall_s=r["group_wall_s"],
                           device=r["device"], seed=rec["job"]["seed"], size=rec["job"]["size"],
                           source=rec["job"]["source"])
    return outp


def _core_seconds(res: list[dict], pre: dict) -> tuple[float, float]:
    """Seconds of the runs and of their pre-training, one core each: a group's
    wall time is shared by its members, so each group counts once."""
    runs = {(x["group_wall_s"], x["device"], x["group_size"]) for x in res}
    pretraining = {(p["wall_s"], p["device"]) for p in pre.values()}
    return sum(w for w, _, _ in runs), sum(w for w, _ in pretraining)


def _spread(groups: dict) -> list[dict]:
    """max - min loss of each group of two or more runs, largest first."""
    rows = [dict(zip(("size", "source", "data_tokens", "target", "pretrain_tokens"), k[:5]), runs=len(v),
                 spread=max(v) - min(v)) for k, v in groups.items() if len(v) > 1]
    return sorted(rows, key=lambda r: -r["spread"])


def quality(out: Path, spec_name: str | None = None) -> dict:
    """The quality figures of one spec's finished runs: capped and failed runs,
    runs best at step 0 or at the first evaluation after it (their optimum was
    not resolved), the seed-to-seed spread at the smallest D_F, the spread that
    the choice of pre-training run adds, and the measured cost."""
    recs, info = load_results(out, spec_name)
    res = [r["result"] for r in recs]
    first = [r["run_id"] for r, x in zip(recs, res)
             if len(x["curve_tokens"]) > 1 and x["best_tokens"] <= x["curve_tokens"][1]]
    d_min = min((r["cell"]["data_tokens"] for r in recs), default=0)
    by_seed: dict = {}
    by_pretrain: dict = {}
    for r, x in zip(recs, res):
        c = r["cell"]
        if x["status"] == "failed":
            continue
        # a pre-training run's checkpoints (amounts p) are different starts, not repeats
        cell = (c["size"], c["source"], c["data_tokens"], c["target"], c["pretrain_tokens"])
        if c["data_tokens"] == d_min:
            by_seed.setdefault(cell + (c.get("pretrain_run"),), []).append(x["loss"])
        if c["source"] != SCRATCH:
            by_pretrain.setdefault(cell + (c["seed"],), []).append(x["loss"])
    pre = _pretrain_records(out, recs)
    by_job: dict = {}
    for p in pre.values():
        by_job.setdefault((p["size"], p["source"], p["tokens"]), []).append(p["final_val_loss"])
    run_s, pre_s = _core_seconds(res, pre)
    tokens = sum(x["tokens_seen"] for x in res)
    return dict(
        spec=info["name"], finished=len(recs), expected=len(info["run_ids"]),
        capped=sum(x["status"] == "capped" for x in res), failed=sum(x["status"] == "failed" for x in res),
        best_at_first_eval=first, smallest_data_tokens=d_min,
        seed_spread=_spread(by_seed), pretrain_run_spread=_spread(by_pretrain),
        pretrain_seed_spread=[dict(size=k[0], source=k[1], runs=len(v), spread=max(v) - min(v))
                              for k, v in by_job.items() if len(v) > 1],
        run_core_hours=run_s / 3600, pretrain_core_hours=pre_s / 3600,
        run_tokens_per_core_s=tokens / run_s if run_s else math.nan)


__all__ = ["status", "load_results", "export", "quality"]
