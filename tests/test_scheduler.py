import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

import loss_grid as lg
from trainer.export import export, status
from trainer.files import atomic_write_json
from trainer.plan import CPU_PACK
from trainer.scheduler import RunDir, order_tasks, run_grid
from trainer.spec import SpecError, load_spec, parse_spec
from _trainer_corpus import corpus_root

# Tiny models gain nothing from intra-op threads, and CI's few cores are shared.
torch.set_num_threads(1)

MICRO = Path(__file__).parents[1] / "trainer" / "specs" / "micro.toml"
ENV = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")


def test_grid_runs_exports_and_is_not_redone(tmp_path):
    root = corpus_root(tmp_path)
    sp = load_spec(MICRO)
    out = tmp_path / "out"
    summary = run_grid(sp, out, root)
    assert summary["complete"] and summary["finished_runs"] == 12
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*.json")}
    again = run_grid(sp, out, root)
    assert again["finished_runs"] == 0 and again["complete"]
    assert mtimes == {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*.json")}
    assert status(out)[0]["total"] == 12
    assert status(out)[0]["pretrain"] == f"{len(sp.pretrain_jobs)}/{len(sp.pretrain_jobs)}" != "0/0"

    info = export(out, tmp_path / "g.nc")
    assert info["runs"] == 12
    ds = xr.open_dataset(tmp_path / "g.nc", engine="h5netcdf")
    assert dict(ds.sizes)["run"] == 12
    for c in lg.COORDS + lg.DATA_VARS:  # the contract, as loss_grid.py names it
        assert ds[c].dims == (("run", "eval") if c in lg.CURVES else ("run",)), c
    assert set(ds.coords) | set(ds.data_vars) == set(lg.COORDS + lg.DATA_VARS) | {"run"}
    assert set(ds.status.values) <= {"ok", "capped", "failed"}
    assert ds.attrs["loss_units"] == "nats" and ds.attrs["token"] == "byte" and ds.attrs["vocab_size"] == 256
    assert ds.attrs["spec"] == MICRO.read_text()
    assert ds.pretrain_run.dims == ("run",)
    assert [v["seed"] for v in json.loads(ds.attrs["pretrain"]).values()] == [0]
    man = json.loads(ds.attrs["corpus_manifest"])
    assert len(man["python"]["train"]) == 64  # a sha256
    scratch = ds.where(ds.source == "none", drop=True)
    assert (scratch.pretrain_tokens == 0).all() and (ds.where(ds.source == "text", drop=True).pretrain_tokens == 32768).all()
    # The point is chosen at the curve's minimum (selection windows); the loss
    # is scored on the report windows; every curve starts at step 0; padding is NaN.
    np.testing.assert_allclose(ds.loss_select.values, np.nanmin(ds.curve_loss.values, axis=1))
    assert np.isfinite(ds.loss.values).all() and (ds.loss.values != ds.loss_select.values).all()
    assert (ds.curve_tokens.values[:, 0] == 0).all()
    assert ds.attrs["core_hours"] > 0
    ds.close()

    # The export loads with the analysis half's loader, through the contract.
    import bayes_transfer as bt

    g = bt.load_grid(tmp_path / "g.nc")
    assert len(g.runs) + len(g.excluded) == 12
    assert set(g.runs["source"]) <= {"none", "text"} and set(g.runs["target"]) == {"python", "german"}
    ds.close()

    # A [[run]] spec naming the grid's checkpoints trains only its new cell, on the grid's pre-training.
    pre = {p: p.stat().st_mtime_ns for p in (out / "pretrain").rglob("*") if p.is_file()}
    text = MICRO.read_text().split("[grid]")[0] + "[pretrain]" + MICRO.read_text().split("[pretrain]")[1]
    text = text.replace("eval_seqs = 8\n\n[train]", "eval_seqs = 8\ncheckpoints = [32768]\n\n[train]", 1)
    text += ('\n[[run]]\nsize = "25k"\ntarget = "python"\nsource = "text"\npretrain_tokens = 32768\n'
             'data_tokens = 4096\nseed = 5\n\n[[run]]\nsize = "25k"\ntarget = "python"\nsource = "none"\n'
             'data_tokens = 4096\nseed = 0\n')
    (tmp_path / "next.toml").write_text(text)
    # priced against the grid's directory: only the new cell is a candidate, and its pre-training is free
    from typer.testing import CliRunner

    from trainer.cli import app

    priced = {}
    for name, extra in (("alone", []), ("against", ["--runs", str(out)])):
        res = CliRunner().invoke(app, ["grid", "price", str(tmp_path / "next.toml"), "--out",
                                       str(tmp_path / f"{name}.csv"), *extra])
        assert res.exit_code == 0, res.output
        priced[name] = pd.read_csv(tmp_path / f"{name}.csv")
    assert len(priced["alone"]) == 2 and len(priced["against"]) == 1
    new = priced["against"].iloc[0]
    assert [new["seed"], new["pretrain_seed"], new["source"]] == [5, 0, "text"]
    assert priced["alone"].query("seed == 5")["cost_core_hours"].iloc[0] > new["cost_core_hours"]
    more = run_grid(load_spec(tmp_path / "next.toml"), out, root)
    assert more["finished_runs"] == 1 and more["complete"]  # the scratch run was the grid's
    assert pre == {p: p.stat().st_mtime_ns for p in (out / "pretrain").rglob("*") if p.is_file()}


def test_groups_are_ordered_by_expected_cost_pretraining_first():
    costs = {("pre", 0): 5.0, ("pre", 1): 9.0, ("cell", 0): 3.0, ("cell", 1): 7.0, ("cell", 2): 1.0}
    cost = lambda kind, i: costs[kind, i]  # noqa: E731
    assert order_tasks({0, 1}, {0, 1, 2}, cost) == [("pre", 1), ("pre", 0), ("cell", 1), ("cell", 0), ("cell", 2)]
    assert order_tasks({0, 1}, {0, 1, 2}, cost, "shortest") == [("pre", 0), ("pre", 1), ("cell", 2), ("cell", 0),
                                                                 ("cell", 1)]
    with pytest.raises(ValueError, match="order must be one of longest, shortest"):
        order_tasks(set(), set(), cost, "random")


@pytest.mark.parametrize("order", ["shortest", "longest"])
def test_groups_train_in_the_order_asked(tmp_path, order):
    root = corpus_root(tmp_path)
    out = tmp_path / "out"
    run_grid(load_spec(MICRO), out, root, workers=1, order=order)
    written = {}  # D_F -> when its run records were written (one group after another with one worker)
    for path in (out / "runs").glob("*.json"):
        written.setdefault(json.loads(path.read_text())["cell"]["data_tokens"], []).append(path.stat().st_mtime_ns)
    small, large = written[4096], written[16384]  # a 16 KiB run costs ~2.3x a 4 KiB one
    first, then = (small, large) if order == "shortest" else (large, small)
    assert max(first) < min(then)


def test_time_limit_starts_nothing_new(tmp_path):
    summary = run_grid(load_spec(MICRO), tmp_path / "out", corpus_root(tmp_path), time_limit=0)
    assert not summary["complete"] and summary["finished_runs"] == 0
    assert summary["remaining_runs"] == 12 and summary["remaining_pretrain"] == 1


def test_mismatched_checkpoint_is_an_error_before_training(tmp_path):
    from trainer.model import EnsembleGPT, config_for
    from trainer.train import save_checkpoint

    root = corpus_root(tmp_path)
    sp = load_spec(MICRO)
    g = RunDir(sp, tmp_path / "out", root, CPU_PACK)
    job = sp.pretrain_jobs[0]
    cfg = config_for("100k")
    save_checkpoint(g.ckpt_path(job.job_id, 32768), cfg, EnsembleGPT(cfg, [0]).member_state(0), {})
    with pytest.raises(ValueError, match="is for model"):
        run_grid(sp, tmp_path / "out", root)
    assert not (tmp_path / "out" / "runs").exists()


def _cli(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "trainer.cli", *args], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def test_sigkill_midway_then_resume_equals_uninterrupted(tmp_path):
    root = corpus_root(tmp_path)
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    p = _cli("grid", "run", str(MICRO), "--out", str(ref), "--corpora", str(root))
    assert p.wait(timeout=300) == 0, p.stderr.read()

    p = _cli("grid", "run", str(MICRO), "--out", str(cut), "--corpora", str(root))
    t0 = time.time()
    while not list((cut / "runs").glob("*.json")) and time.time() - t0 < 200:
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    n_before = len(list((cut / "runs").glob("*.json")))
    assert 0 < n_before < 12
    # Nothing half-written: every result file parses.
    for f in (cut / "runs").glob("*.json"):
        json.loads(f.read_text())
    p = _cli("grid", "run", str(MICRO), "--out", str(cut), "--corpora", str(root))
    assert p.wait(timeout=300) == 0, p.stderr.read()
    assert json.loads(p.stdout.read())["finished_runs"] == 12 - n_before

    export(ref, tmp_path / "ref.nc")
    export(cut, tmp_path / "cut.nc")
    a = xr.open_dataset(tmp_path / "ref.nc", engine="h5netcdf")
    b = xr.open_dataset(tmp_path / "cut.nc", engine="h5netcdf")
    assert list(a.run.values) == list(b.run.values)
    for v in ("loss", "best_step", "curve_loss", "train_loss", "curve_tokens"):
        np.testing.assert_array_equal(a[v].values, b[v].values, err_msg=v)
    a.close(), b.close()


def test_run_command_trains_one_cell(tmp_path):
    root = corpus_root(tmp_path)
    out = tmp_path / "one.json"
    p = _cli("run", "--size", "25k", "--target", "python", "--data-tokens", "4096", "--out", str(out),
             "--corpora", str(root))
    # The default settings stop a tiny run by early stopping well within the cap.
    assert p.wait(timeout=300) == 0, p.stderr.read()
    r = json.loads(out.read_text())["result"]
    assert r["status"] in ("ok", "capped") and r["loss"] > 0
    bad = _cli("run", "--size", "9z", "--target", "python", "--data-tokens", "4096", "--out", str(out),
               "--corpora", str(root))
    assert bad.wait(timeout=120) == 2 and "unknown model size '9z'" in bad.stderr.read()


def test_export_needs_a_spec_name_when_dir_holds_several(tmp_path):
    out = tmp_path / "out"
    (out / "specs").mkdir(parents=True)
    for n in ("a", "b"):
        (out / "specs" / f"{n}.json").write_text(json.dumps({"name": n, "text": "", "run_ids": []}))
    with pytest.raises(SpecError, match="choose one with --spec"):
        export(out, tmp_path / "x.nc")
    with pytest.raises(SpecError, match="no finished runs"):
        export(out, tmp_path / "x.nc", "a")


def test_worker_processes_give_the_same_grid(tmp_path):
    root = corpus_root(tmp_path)
    sp = load_spec(MICRO)
    one = run_grid(sp, tmp_path / "one", root)
    two = run_grid(sp, tmp_path / "two", root, device="cpu", workers=2)
    assert one["complete"] and two["complete"] and two["finished_runs"] == 12
    a = {p.name: json.loads(p.read_text())["result"] for p in (tmp_path / "one" / "runs").glob("*.json")}
    b = {p.name: json.loads(p.read_text())["result"] for p in (tmp_path / "two" / "runs").glob("*.json")}
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k]["curve_loss"], b[k]["curve_loss"], err_msg=k)


def test_a_pretraining_run_whose_checkpoints_are_gone_is_redone_for_pending_runs(tmp_path):
    root = corpus_root(tmp_path)
    sp = load_spec(MICRO)
    out = tmp_path / "out"
    run_grid(sp, out, root, time_limit=0)  # records the spec only
    g = RunDir(sp, out, root, CPU_PACK)
    job = sp.pretrain_jobs[0]
    # As if only the results travelled back: a result file, no checkpoints.
    atomic_write_json(g.job_dir(job) / "result.json", {"job_id": job.job_id, "result": {"status": "ok", "loss": 1.0}})
    assert g.job_needed(job)
    summary = run_grid(sp, out, root)
    assert summary["complete"] and summary["finished_runs"] == 12
    # Once every run that needs it is done, missing checkpoints need nothing.
    for p in g.job_dir(job).glob("*.pt"):
        p.unlink()
    g.refresh()
    assert not g.job_needed(job)


def test_a_damaged_run_record_is_redone_with_a_warning(tmp_path):
    root = corpus_root(tmp_path)
    sp = parse_spec(spec_dict_small())
    out = tmp_path / "out"
    run_grid(sp, out, root)
    rec = next((out / "runs").glob("*.json"))
    good = json.loads(rec.read_text())
    rec.write_text(rec.read_text()[:40])  # truncated
    with pytest.warns(UserWarning, match="is damaged .* it will be redone"):
        st = status(out)
    assert st[0].get("damaged") == 1
    with pytest.warns(UserWarning, match="is damaged"):
        summary = run_grid(sp, out, root)
    assert summary["finished_runs"] == 1 and summary["complete"]
    assert json.loads(rec.read_text())["result"]["curve_loss"] == good["result"]["curve_loss"]


def test_temporary_files_of_a_killed_writer_are_swept(tmp_path):
    root = corpus_root(tmp_path)
    out = tmp_path / "out"
    (out / "runs").mkdir(parents=True)
    stale = out / "runs" / ".x.json.12345.tmp"
    stale.write_text("{")
    logs = []
    run_grid(parse_spec(spec_dict_small()), out, root, log=logs.append)
    assert not stale.exists() and any("removed 1 temporary file" in m for m in logs)


def test_a_second_grid_run_on_the_same_directory_is_refused(tmp_path):
    from trainer.scheduler import DirLock, GridLocked

    out = tmp_path / "out"
    with DirLock(out):
        with pytest.raises(GridLocked, match="is in use by `grid run` pid"):
            run_grid(parse_spec(spec_dict_small()), out, corpus_root(tmp_path))
    # released on exit (and by the kernel if the holder dies)
    run_grid(parse_spec(spec_dict_small()), out, corpus_root(tmp_path))


def test_a_complete_grid_runs_in_a_read_only_directory(tmp_path):
    root = corpus_root(tmp_path)
    sp = parse_spec(spec_dict_small())
    out = tmp_path / "out"
    run_grid(sp, out, root)
    (out / ".lock").chmod(0o444)
    for p in [out, *out.rglob("*")]:
        if p.is_dir():
            p.chmod(0o555)
    try:
        if os.access(out, os.W_OK):
            pytest.skip("running as a user that ignores permissions")
        assert run_grid(sp, out, root)["complete"]
    finally:
        for p in [out, *out.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)


def test_runs_on_other_corpora_are_refused_naming_them(tmp_path):
    import shutil

    root = corpus_root(tmp_path)
    sp = parse_spec(spec_dict_small())
    out = tmp_path / "out"
    run_grid(sp, out, root)
    other = tmp_path / "other"
    shutil.copytree(root, other)
    man = json.loads((other / "manifest.json").read_text())
    man["distributions"]["python"]["splits"]["train"]["sha256"] = "0" * 64
    (other / "manifest.json").write_text(json.dumps(man))
    sp2 = parse_spec(spec_dict_small(seeds=[0, 1]))
    with pytest.raises(SpecError, match="corpora python in .* differ from the build"):
        run_grid(sp2, out, other)


def spec_dict_small(**grid):
    g = dict(sizes=["25k"], targets=["python"], sources=["none"], data_tokens=[4096], seeds=[0])
    g.update(grid)
    return {"name": "small", "grid": g,
            "train": {"batch": 2, "eval_interval": 3, "eval_seqs": 4, "report_seqs": 4, "patience": 1,
                      "budget": 1.5}}


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


@pytest.mark.skipif(not Path("/proc").exists(), reason="needs Linux /proc")
def test_worker_processes_die_with_a_killed_grid_run(tmp_path):
    """No orphan keeps training (and writing records) after its `grid run` is SIGKILLed."""
    root = corpus_root(tmp_path)
    p = _cli("grid", "run", str(MICRO), "--out", str(tmp_path / "out"), "--corpora", str(root), "--workers", "2")
    kids, t0 = [], time.time()
    while len(kids) < 2 and time.time() - t0 < 120:
        time.sleep(0.2)
        kids = [int(c) for t in Path(f"/proc/{p.pid}/task").glob("*")
                for c in (t / "children").read_text().split()]
    assert len(kids) >= 2, "no worker processes started"
    time.sleep(1.0)  # let them get past their initializer
    p.send_signal(signal.SIGKILL)
    p.wait()
    t0 = time.time()
    while any(_alive(k) for k in kids) and time.time() - t0 < 120:  # a worker may still be importing torch
        time.sleep(0.2)
    assert not any(_alive(k) for k in kids)


def test_a_group_stopped_at_the_time_limit_resumes_where_it_stopped(tmp_path, monkeypatch):
    """A fine-tuning/scratch group past the deadline saves its state and writes
    no record; the next call resumes it, and the runs equal uninterrupted ones."""
    root = corpus_root(tmp_path)
    sp = parse_spec(spec_dict_small(data_tokens=[4096, 16384]))
    ref = run_grid(sp, tmp_path / "ref", root, workers=1)
    assert ref["complete"]
    rd = RunDir(sp, tmp_path / "cut", root, CPU_PACK)
    cells = rd.groups()[1][0]
    assert not rd.run_cell_group(cells, device="cpu", deadline=time.monotonic() - 1)
    assert not (tmp_path / "cut" / "runs").exists()
    assert len(list((tmp_path / "cut" / "resume").glob("resume-*.pt"))) == 1
    from trainer.scheduler import dry_run_estimate, saved_states

    run_grid(sp, tmp_path / "cut", root, time_limit=0)  # records the spec only
    st = status(tmp_path / "cut")[0]
    assert st["saved"] == len(cells) and sorted(st["pending_runs"]) == sorted(c.run_id for c in sp.cells)
    state, = saved_states(tmp_path / "cut")
    assert state["runs"] == [c.run_id for c in cells] and state["step"] == 0 and state["steps"] > 0
    assert dry_run_estimate(sp, tmp_path / "cut")["saved"] == 1  # the dry run finds the group's state
    # members that stopped before the state was saved cost nothing more (a copy: the run below resumes this one)
    import shutil

    import torch

    shutil.copytree(tmp_path / "cut", tmp_path / "stopped")
    path = tmp_path / "stopped" / state["path"]
    saved = torch.load(path, map_location="cpu", weights_only=True)
    meta = json.loads(saved["meta"])
    for rec in meta["rec"]:
        rec["status"] = "ok"
    saved["meta"] = json.dumps(meta)
    torch.save(saved, path)
    assert saved_states(tmp_path / "stopped")[0]["stopped"] == {c.run_id: "ok" for c in cells}
    monkeypatch.setattr("trainer.plan.probe_tokens_per_s", lambda *a, **k: 1e4)  # one speed: costs comparable
    whole, rest = (dry_run_estimate(sp, tmp_path / d)["runs_s"] for d in ("cut", "stopped"))
    assert 0 < rest < whole
    again = run_grid(sp, tmp_path / "cut", root, workers=1)
    assert again["complete"] and again["finished_runs"] == ref["finished_runs"]
    assert not list((tmp_path / "cut" / "resume").glob("*")) and status(tmp_path / "cut")[0]["saved"] == 0
    assert status(tmp_path / "cut")[0]["pending_runs"] == []
    for f in (tmp_path / "ref" / "runs").glob("*.json"):
        a = json.loads(f.read_text())["result"]
        b = json.loads((tmp_path / "cut" / "runs" / f.name).read_text())["result"]
        np.testing.assert_array_equal(a["curve_loss"], b["curve_loss"], err_msg=f.name)
        assert a["loss"] == b["loss"]
        assert b["resumed_at_steps"] == ([0] if f.stem in {c.run_id for c in cells} else [])


def _record(out, run_id, size, source, d, seed, loss, best_tokens, wall, pretrain_run="", p=None):
    p = (0 if source == "none" else 2**24) if p is None else p
    atomic_write_json(out / "runs" / f"{run_id}.json", dict(
        run_id=run_id, pretrain_job=None,
        cell=dict(size=size, source=source, target="python", data_tokens=d, seed=seed, pretrain_run=pretrain_run,
                  pretrain_tokens=p),
        result=dict(status="ok", loss=loss, curve_tokens=[0, 1000, 2000, 3000], best_tokens=best_tokens,
                    group_wall_s=wall, device="cpu", group_size=1, tokens_seen=3000)))


def test_quality_counts_unresolved_runs_and_measures_spreads(tmp_path):
    from trainer.export import quality

    out = tmp_path / "out"
    rows = [("a", "25k", "none", 8192, 0, 3.0, 2000, 10.0, ""), ("b", "25k", "none", 8192, 1, 3.1, 2000, 20.0, ""),
            ("c", "25k", "text", 8192, 0, 2.5, 1000, 30.0, "p0"), ("d", "25k", "text", 8192, 0, 2.45, 2000, 40.0, "p1"),
            ("e", "25k", "none", 32768, 0, 2.0, 3000, 50.0, ""),
            ("g", "25k", "text", 8192, 0, 2.9, 2000, 15.0, "p0", 2**20)]  # an earlier checkpoint: not a repeat
    for r in rows:
        _record(out, *r)
    atomic_write_json(out / "specs" / "g.json", {"name": "g", "text": "", "run_ids": [r[0] for r in rows] + ["f"]})
    q = quality(out)
    assert (q["finished"], q["expected"], q["capped"], q["smallest_data_tokens"]) == (6, 7, 0, 8192)
    assert q["best_at_first_eval"] == ["c"]  # best at the first evaluation after step 0
    # seeds at the smallest D_F: scratch 0.1 apart; the fine-tuned pair differs by pre-training run, not seed
    assert [(r["source"], round(r["spread"], 6)) for r in q["seed_spread"]] == [("none", 0.1)]
    assert [round(r["spread"], 6) for r in q["pretrain_run_spread"]] == [0.05]
    assert q["run_core_hours"] == pytest.approx(165 / 3600)
    assert q["run_tokens_per_core_s"] == pytest.approx(6 * 3000 / 165)


def test_two_specs_sharing_scratch_runs_export_as_one_grid(tmp_path):
    """Two sources in one directory (their scratch runs trained once) export as
    one grid whose spec is the union of both, with the same run ids."""
    import tomllib

    import bayes_transfer as bt

    root, out = corpus_root(tmp_path), tmp_path / "out"
    spec = lambda name, source, patience=1: _shared_scratch_spec(tmp_path, name, source, patience)  # noqa: E731

    specs = [spec("a", "text"), spec("b", "text+code")]
    for s in specs:
        assert run_grid(s, out, root, workers=1)["complete"]
    assert len(list((out / "runs").glob("*.json"))) == 3  # one scratch run, shared
    info = export(out, tmp_path / "two_sources.nc", ["a", "b"])
    assert info["runs"] == info["expected"] == 3
    grid = bt.load_grid(tmp_path / "two_sources.nc")
    assert sorted(grid.pairs) == [("text", "python"), ("text+code", "python")]
    ds = xr.open_dataset(tmp_path / "two_sources.nc", engine="h5netcdf")
    union = parse_spec(tomllib.loads(ds.attrs["spec"]), ds.attrs["spec"])
    assert ds.attrs["spec_name"] == union.name == "two_sources"
    assert {c.run_id for c in union.cells} == set(ds["run"].values)
    assert {j.job_id for j in union.pretrain_jobs} == {j.job_id for s in specs for j in s.pretrain_jobs}
    ds.close()
    # specs that train differently are not one grid
    run_grid(spec("c", "text", patience=2), out, root, time_limit=0)  # records the spec only
    with pytest.raises(SpecError, match="train differently"):
        export(out, tmp_path / "x.nc", ["a", "c"])


def _group_saved_by_commit_a_then_commit_b(tmp_path, monkeypatch):
    """A grid whose first group commit "a" stopped at once (its state saved), now run as commit "b"."""
    from trainer import provenance

    root = corpus_root(tmp_path)
    sp = parse_spec(spec_dict_small(data_tokens=[4096, 16384]))
    rd = RunDir(sp, tmp_path / "out", root, CPU_PACK)
    cells = rd.groups()[1][0]
    monkeypatch.setattr(provenance, "_CODE_VERSION", "a" * 40)
    assert not rd.run_cell_group(cells, device="cpu", deadline=time.monotonic() - 1)
    monkeypatch.setattr(provenance, "_CODE_VERSION", "b" * 40)
    return sp, root, cells


def test_a_group_saved_by_another_commit_is_skipped_and_the_rest_goes_on(tmp_path, monkeypatch):
    sp, root, cells = _group_saved_by_commit_a_then_commit_b(tmp_path, monkeypatch)
    logs = []
    summary = run_grid(sp, tmp_path / "out", root, workers=1, log=logs.append)
    assert any("skipped: resume file" in m and "written by code aaaaaaaaaaaa" in m for m in logs), logs
    assert summary["finished_runs"] == len(sp.cells) - len(cells) and not summary["complete"]
    assert len(list((tmp_path / "out" / "resume").glob("resume-*.pt"))) == 1  # kept for the commit that began it


def test_a_group_saved_by_another_commit_that_trains_alike_is_resumed(tmp_path, monkeypatch):
    from trainer import provenance

    sp, root, cells = _group_saved_by_commit_a_then_commit_b(tmp_path, monkeypatch)
    # commit "a" differs from this one only in comments and docstrings
    monkeypatch.setattr(provenance, "source_at", lambda commit, name: "# an older comment\n" + provenance._RUNNING[name])
    summary = run_grid(sp, tmp_path / "out", root, workers=1)
    assert summary["complete"]
    rec = json.loads((tmp_path / "out" / "runs" / f"{cells[0].run_id}.json").read_text())
    assert rec["result"]["code_versions"] == ["a" * 40, "b" * 40]


def test_training_code_is_compared_as_a_program():
    from trainer.provenance import program, trains_like

    code = 'def f(x):\n    """Twice x."""\n    return 2 * x  # doubled\n'
    assert program(code) == program('def f(x):\n    """Two times x."""\n\n    return 2 * x\n')
    assert program(code) == program("def f(x):\n    return 2 * x\n")
    assert program(code) != program('def f(x):\n    """Twice x."""\n    return 2.0 * x\n')
    assert not trains_like("0" * 40)  # a commit git cannot show: not known to train alike


def test_a_damaged_saved_state_is_listed_as_unreadable(tmp_path):
    from trainer.scheduler import saved_states

    (tmp_path / "resume").mkdir()
    (tmp_path / "resume" / "resume-0123.pt").write_bytes(b"not a torch file")
    row, = saved_states(tmp_path)
    assert row["path"] == "resume/resume-0123.pt" and row["runs"] == [] and "error" in row


def _shared_scratch_spec(tmp_path, name, source, patience=1):
    """A one-cell spec from scratch and from `source`: specs of two sources share its scratch run."""
    path = tmp_path / f"{name}.toml"
    path.write_text(f"""name = "{name}"
[grid]
sizes = ["25k"]
targets = ["python"]
sources = ["none", "{source}"]
data_tokens = [4096]
pretrain_tokens = [16384]
seeds = [0]
[pretrain]
tokens = 16384
eval_interval = 4
eval_seqs = 4
[train]
batch = 2
eval_interval = 3
eval_seqs = 4
report_seqs = 4
patience = {patience}
budget = 1.5
lr = {{ "25k" = 1e-2 }}
""")
    return load_spec(path)


def test_a_shared_run_held_in_another_grid_s_saved_group_is_left_to_that_group(tmp_path):
    root, out = corpus_root(tmp_path), tmp_path / "out"
    a, b = _shared_scratch_spec(tmp_path, "a", "text"), _shared_scratch_spec(tmp_path, "b", "text+code")
    run_grid(a, out, root, time_limit=0)  # records the spec
    rd = RunDir(a, out, root, CPU_PACK)
    for job in a.pretrain_jobs:
        assert rd.run_pretrain_group([job], device="cpu")
    group, = rd.groups()[1]
    scratch = next(c for c in group if c.source == "none")
    assert not rd.run_cell_group(group, device="cpu", deadline=time.monotonic() - 1)  # a stops part-way
    logs = []
    run_grid(b, out, root, workers=1, log=logs.append)
    done = {p.stem for p in (out / "runs").glob("*.json")}
    assert scratch.run_id not in done and len(done) == 1  # b trained its fine-tuned run only
    assert any("wait in the saved state of another grid's group" in m for m in logs), logs
    assert run_grid(a, out, root, workers=1)["complete"]
    rec = json.loads((out / "runs" / f"{scratch.run_id}.json").read_text())["result"]
    assert rec["resumed_at_steps"] == [0]  # finished by the group that began it
    assert run_grid(b, out, root, workers=1)["complete"]


def test_run_lengths_calibrate_on_finished_runs(tmp_path):
    """Maximum likelihood on the recorded tokens recovers a law far from the budget rule's
    (D_F^1.0 N^-0.5, scratch 3x) with a third of the runs capped at a budget, a capped run
    counting as a lower bound: least squares on the uncapped runs alone is biased short.
    Damaged records do not count."""
    from trainer.plan import RunLength, censored_least_squares
    from trainer.scheduler import n_params
    from trainer.spec import Cell, Settings, expected_tokens

    rng = np.random.default_rng(0)
    runs = tmp_path / "runs"
    runs.mkdir()
    truth = (np.log(2e5), 1.0, np.log(3.0), -0.5)
    budget = 3e6

    def record(i, size, d, source, noise=0.0):
        t = np.exp(truth[0] + truth[1] * np.log(d / 8192) + truth[2] * (source == "none")
                   + truth[3] * np.log(n_params(size) / 1e5) + noise)
        atomic_write_json(runs / f"r{i}.json", {
            "cell": {"data_tokens": d, "source": source, "size": size}, "n_params": n_params(size),
            "result": {"status": "capped" if t > budget else "ok", "loss": 1.0, "curve_tokens": [0, int(min(t, budget))]}})
        return t > budget

    cells = [(s, d, src) for s in ("25k", "50k", "150k") for d in (8192, 32768, 131072) for src in ("none", "text")]
    for i, (s, d, src) in enumerate(cells[:10]):
        record(i, s, d, src, noise=rng.normal(0, 0.5))
    assert RunLength.calibrated(tmp_path).coef is None  # too few: the budget rule
    capped = sum(record(100 + i, s, d, src, noise=rng.normal(0, 0.5)) for i, (s, d, src) in enumerate(cells * 6))
    (runs / "damaged.json").write_text("{")
    with pytest.warns(UserWarning, match="damaged"):
        length = RunLength.calibrated(tmp_path)
    assert length.runs == 10 + 6 * len(cells) and length.capped >= capped and 0.3 < capped / len(cells * 6) < 0.5
    # bounds at 3 sd of each estimate over repeated simulations of this design (0.11, 0.06, 0.11, 0.09; spread 0.05)
    assert np.all(np.abs(np.subtract(length.coef, truth)) < [0.33, 0.17, 0.34, 0.27]) and 0.33 < length.spread < 0.63
    # the same runs without their capped ones, by least squares: the D_F slope comes out too shallow
    # (by 0.16 on average over repeated simulations, where the censored fit's is unbiased)
    recs = [json.loads(p.read_text()) for p in runs.glob("r*.json")]
    X = np.array([[1.0, np.log(r["cell"]["data_tokens"] / 8192), float(r["cell"]["source"] == "none"),
                   np.log(r["n_params"] / 1e5)] for r in recs])
    y = np.log([r["result"]["curve_tokens"][-1] for r in recs])
    lower = np.array([r["result"]["status"] == "capped" for r in recs])
    biased = np.linalg.lstsq(X[~lower], y[~lower], rcond=None)[0]
    assert truth[1] - biased[1] > 0.08 and abs(length.coef[1] - truth[1]) < truth[1] - biased[1]
    assert np.allclose(censored_least_squares(X, y, lower)[0], length.coef)

    settings = Settings(lr=1e-3, batch=16, eval_interval=25, max_steps=int(budget / (16 * 256)), warmup=10)
    cell = Cell(size="150k", target="python", source="none", pretrain_tokens=0, data_tokens=131072, seed=0,
                settings=settings, pretrain_job=None)
    a, b, c, d = length.coef
    assert length.tokens(cell) == pytest.approx(np.exp(a + b * np.log(16) + c + d * np.log(n_params("150k") / 1e5)))
    # P(capped) and E[min(t, budget)] against draws from the fitted lognormal, for a cell
    # likely capped and one whose budget is near its median length
    draws = np.exp(np.log(length.tokens(cell)) + length.spread * rng.standard_normal(1_000_000))
    for steps in (settings.max_steps, int(length.tokens(cell) / (16 * 256))):
        at = Cell(size="150k", target="python", source="none", pretrain_tokens=0, data_tokens=131072, seed=0,
                  settings=Settings(lr=1e-3, batch=16, eval_interval=25, max_steps=steps, warmup=10), pretrain_job=None)
        cap = steps * 16 * 256
        assert length.p_capped(at) == pytest.approx((draws > cap).mean(), abs=0.003)
        assert length.within_budget(at) == pytest.approx(np.minimum(draws, cap).mean(), rel=1e-3)
    assert 0.45 < length.p_capped(at) < 0.55
    # a saved group's run that has trained `done` tokens without stopping: what it still trains,
    # and P(capped), are those of the draws longer than `done`
    for done in (0.5 * length.tokens(at), 0.9 * cap):
        alive = draws[draws > done]
        assert length.within_budget(at, done) == pytest.approx((np.minimum(alive, cap) - done).mean(), rel=2e-3)
        assert length.p_capped(at, done) == pytest.approx((alive > cap).mean(), abs=0.003)
    assert length.within_budget(at, cap) == 0 and length.p_capped(at, cap) == 1  # nothing left at the budget
    assert RunLength().within_budget(at, 1000.0) == min(RunLength().tokens(at), cap) - 1000.0
    cap = settings.max_steps * 16 * 256
    assert RunLength().tokens(cell) == expected_tokens(131072, True) and RunLength().p_capped(cell) is None
    assert RunLength().within_budget(cell) == min(expected_tokens(131072, True), cap)
    assert f"calibrated on {length.runs} finished runs here ({length.capped} capped, as lower bounds)" in length.describe()
    assert f"D_F^{length.coef[1]:.2f}" in length.describe()

    # 4 runs not capped, fitted exactly, and many capped: too few to measure a spread, so the budget rule
    for p in runs.glob("*.json"):
        p.unlink()
    for i, (s, d, src) in enumerate(cells[:4]):
        record(i, s, d, src)
    for i, (s, d, src) in enumerate((cells * 3)[4:40]):
        if not record(100 + i, s, d, src, noise=3.0):
            (runs / f"r{100 + i}.json").unlink()
    status = [json.loads(p.read_text())["result"]["status"] for p in runs.glob("*.json")]
    assert len(status) >= RunLength.MIN_RUNS and status.count("ok") < 6
    assert RunLength.calibrated(tmp_path).coef is None


def test_specs_run_together_keep_the_workers_busy_and_train_a_shared_run_once(tmp_path, monkeypatch):
    """With two workers, spec b's pre-training starts while spec a's runs (a's fine-tuning
    waits for it, leaving a worker idle), and the scratch run both specs hold trains once."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from trainer import scheduler

    root, out = corpus_root(tmp_path), tmp_path / "out"
    a, b = _shared_scratch_spec(tmp_path, "a", "text"), _shared_scratch_spec(tmp_path, "b", "text+code")
    both_pretraining = threading.Barrier(2, timeout=60)  # broken unless the two pre-trainings overlap
    trained, real_run_task = [], scheduler.run_task

    def run_task(spec, out, corpora, pack, kind, idx, *args):
        if kind == "pre":
            both_pretraining.wait()
        else:
            rd = RunDir(spec, out, corpora, pack)
            trained.extend(c.run_id for c in rd.to_train(rd.groups()[1][idx]))
        return real_run_task(spec, out, corpora, pack, kind, idx, *args)

    # threads instead of processes, so the wrapped task is the one that runs
    monkeypatch.setattr(scheduler, "ProcessPoolExecutor", lambda n, **_: ThreadPoolExecutor(n))
    monkeypatch.setattr(scheduler, "run_task", run_task)
    summaries = scheduler.run_grids([a, b], out, root, device="cpu", workers=2)
    assert [s["complete"] for s in summaries] == [True, True]
    assert sum(s["finished_runs"] for s in summaries) == 3  # the shared run counts for whichever spec trained it
    assert sorted(trained) == sorted({c.run_id for c in a.cells + b.cells})  # 3 runs, none twice
