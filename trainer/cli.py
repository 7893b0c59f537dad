"""`transfer-train`: corpora, single runs, grids and the benchmark."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from trainer.corpora.cli import app as corpora_app

app = typer.Typer(help="Train GPT loss grids for scaling laws of transfer.", no_args_is_help=True)
app.add_typer(corpora_app, name="corpora")
grid_app = typer.Typer(help="Run, price, inspect and export grids of runs from a TOML spec.", no_args_is_help=True)
app.add_typer(grid_app, name="grid")
console = Console(stderr=True, soft_wrap=True)  # an error stays one line, however long


def _fail(msg: str, code: int = 2) -> None:
    console.print(f"[red]error:[/red] {escape(msg)}", highlight=False)
    raise typer.Exit(code)


def _log(msg: str) -> None:
    console.print(escape(msg), highlight=False)


def _os_error(e: OSError) -> str:
    where = f" {e.filename}" if e.filename else ""
    return f"{e.strerror or type(e).__name__}:{where}"


def _device(name: Optional[str]):
    import torch

    from trainer.train import device_default

    try:
        dev = torch.device(name) if name else device_default()
    except RuntimeError as e:
        _fail(f"--device {name!r}: {e}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        _fail("--device cuda: no CUDA device is available")
    return dev


def _be_nice(dev, nice: bool) -> None:
    """On a CPU a long grid runs at low priority, so the machine stays usable.
    Where the kernel groups processes by session (autogroup), nice orders
    only within a session: started with `setsid`, the grid leads its own
    session and lowers that group too."""
    if not (nice and dev.type == "cpu"):
        return
    try:
        os.nice(max(0, 10 - os.nice(0)))  # to 10, not by 10: a second call changes nothing
        if os.getsid(0) == os.getpid():
            Path("/proc/self/autogroup").write_text("10")
    except OSError:
        pass


def _specs(paths: list[Path], corpora: Optional[Path] = None):
    """Load and check specs: schema, token budgets, and D_F against the corpus
    sizes (of the built corpora, or of the reference build before any is built)."""
    from trainer.corpora.store import CorpusError, manifest, reference_manifest
    from trainer.plan import check_budgets, check_sizes
    from trainer.spec import SpecError, load_spec

    try:
        man = manifest(corpora)
    except CorpusError:
        man = reference_manifest()
    try:
        sps = [load_spec(s) for s in paths]
        for sp in sps:
            check_budgets(sp)
            check_sizes(sp, man)
    except SpecError as e:
        _fail(str(e))
    return sps


@app.command()
def run(
    size: str = typer.Option(..., help="model size from the ladder (e.g. 100k)"),
    target: str = typer.Option(..., help="target distribution (e.g. python)"),
    data_tokens: int = typer.Option(..., help="D_F: target train bytes"),
    out: Path = typer.Option(..., help="result JSON to write"),
    seed: int = typer.Option(0),
    init: Optional[Path] = typer.Option(None, help="pre-trained checkpoint (.pt) to fine-tune from"),
    corpora: Optional[Path] = typer.Option(None, help="corpus root dir or packed .tar"),
    device: Optional[str] = typer.Option(None, help="cpu or cuda (default: cuda if present)"),
    compile: Optional[bool] = typer.Option(None, "--compile/--no-compile", help="torch.compile (default: on CUDA for N >= 2e6)"),
):
    """Train one cell (from scratch, or fine-tuned from --init) and write its result JSON."""
    from trainer.corpora import default_root
    from trainer.data import Corpora, Stream, source_mix, stable_int
    from trainer.files import atomic_write_json
    from trainer.model import SIZES, config_for
    from trainer.spec import CTX, cell_settings
    from trainer.train import Member, load_checkpoint, train_group

    dev = _device(device)
    try:
        if size not in SIZES:
            raise ValueError(f"unknown model size {size!r}; known: {', '.join(SIZES)}")
        if data_tokens < CTX + 1:
            raise ValueError(f"--data-tokens must be at least one sequence ({CTX + 1}), got {data_tokens}")
        if out.exists() and out.is_dir():
            raise ValueError(f"--out {out} is a directory; give a file name")
        cfg = config_for(size)
        state = load_checkpoint(init, cfg) if init else None
        cp = Corpora(corpora or default_root())
        source_mix(target)
        sub = cp.subset(target, data_tokens, seed)
        val = Stream([cp.split(target, "val")], [1.0])
    except (ValueError, FileNotFoundError) as e:
        _fail(str(e))
    except OSError as e:
        _fail(_os_error(e))
    st = cell_settings({}, size, data_tokens)
    m = Member(f"{target}.{size}.d{data_tokens}.s{seed}", stable_int("run", seed, size, target),
               Stream([sub], [1.0]), val, init=state, data_tokens=data_tokens)
    r = train_group(cfg, [m], st, device=dev, compile=compile, progress=_log)[0]
    try:
        atomic_write_json(out, dict(size=size, target=target, init=str(init) if init else None,
                                    settings=st.to_dict(), result=r, manifest=cp.manifest["distributions"]))
    except OSError as e:
        _fail(_os_error(e))
    typer.echo(f"{r['status']}: loss {r['loss']:.4f} nats/byte at step {r['best_step']} ({r['steps']} steps) -> {out}")


@grid_app.command("run")
def grid_run(
    specs: list[Path] = typer.Argument(..., help="grid spec(s) (TOML) run into the same directory: "
                                     "groups start spec by spec, and an idle worker takes the next spec's"),
    out: Path = typer.Option(..., help="output directory (shared by specs whose runs overlap)"),
    corpora: Optional[Path] = typer.Option(None, help="corpus root dir or packed .tar"),
    time_limit: Optional[float] = typer.Option(None, min=0, help="seconds (all specs together): then groups in "
                                               "flight save their state and stop (the next call resumes them), exit 0"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the runs and the estimated cost, train nothing"),
    device: Optional[str] = typer.Option(None, help="cpu or cuda (default: cuda if present)"),
    compile: Optional[bool] = typer.Option(None, "--compile/--no-compile",
                                           help="torch.compile (default: on CUDA for N >= 2e6)"),
    executor: Optional[str] = typer.Option(None, help="run through submitit: slurm, local or inprocess"),
    chunk: int = typer.Option(4, min=1, help="with --executor: groups per array task"),
    partition: Optional[str] = typer.Option(None, help="with --executor slurm: the partition"),
    workers: Optional[int] = typer.Option(None, min=1, help="groups trained at once, each in its own process "
                                          "(default: the free cores on a CPU, 1 on a GPU)"),
    nice: bool = typer.Option(True, "--nice/--no-nice", help="on a CPU, run at low priority (nice 10)"),
    order: str = typer.Option("longest", help="within each spec: longest groups "
                              "first (the whole grid soonest) or shortest (the most runs finished by a time limit)"),
):
    """Run every pending run of one or more grids (resumable: finished runs are kept)."""
    from trainer.scheduler import ORDERS, GridLocked, run_grids
    from trainer.spec import SpecError

    if order not in ORDERS:
        _fail(f"--order must be one of {', '.join(ORDERS)}, got {order!r}")
    sps = _specs(specs, corpora)
    dev = _device(device)
    if dry_run:
        for sp in sps:
            _print_dry_run(sp, out, dev.type == "cuda")
        return
    if out.exists() and not out.is_dir():
        _fail(f"--out {out} is not a directory")
    _be_nice(dev, nice)
    try:
        if executor:
            from trainer.slurm import submit_grid

            for sp in sps:  # one spec's array jobs after another's; each summary as it is known
                typer.echo(json.dumps(submit_grid(sp, out, corpora, executor=executor, chunk=chunk,
                                                  partition=partition, log=_log)))
        else:
            for summary in run_grids(sps, out, corpora, time_limit=time_limit, device=dev, compile=compile,
                                     workers=workers, order=order, log=_log):
                typer.echo(json.dumps(summary))
    except GridLocked as e:
        _fail(str(e), 3)
    except (SpecError, ValueError, FileNotFoundError) as e:
        _fail(str(e))
    except OSError as e:
        _fail(_os_error(e))


def _print_dry_run(sp, out: Path, cuda: bool) -> None:
    import torch

    from trainer.plan import default_pack
    from trainer.scheduler import RunDir, dry_run_estimate

    torch.set_num_threads(1)  # probe the speed of one worker process
    rd = RunDir(sp, out, None, default_pack(sp, cuda))
    pgs, cgs = rd.groups()
    t = Table(title=f"{sp.name}: {len(sp.pretrain_jobs)} pre-training runs, {len(sp.cells)} runs")
    for col in ("group", "size", "kind", "D_F", "members", "done", "max steps"):
        t.add_column(col)
    for i, grp in enumerate(pgs):
        t.add_row(f"P{i}", grp[0].size, "pretrain " + ",".join(j.source for j in grp), f"{grp[0].tokens:.3g}",
                  str(len(grp)), str(sum(rd.job_done(j) for j in grp)), "")
    for i, grp in enumerate(cgs):
        kinds = sorted({"scratch" if c.source == "none" else c.source for c in grp})
        t.add_row(f"G{i}", grp[0].size, "+".join(kinds), f"{grp[0].data_tokens:.3g}", str(len(grp)),
                  str(sum(rd.done(c) for c in grp)), str(grp[0].settings.max_steps))
    Console().print(t)
    e = dry_run_estimate(sp, out, cuda)
    unit = "GPU-hours" if cuda else "core-hours"
    typer.echo(f"estimated cost of what remains: pre-training {e['pretrain_s'] / 3600:.2f} + runs "
               f"{e['runs_s'] / 3600:.2f} = {e['total_s'] / 3600:.2f} {unit} (speeds probed on this machine; "
               f"{e['run_length']}" + (f"; {e['saved']} saved group(s) priced from where they stopped" if e["saved"]
                                       else "") + ")")
    if e["p_capped"]:
        likely = sorted((p, r) for r, p in e["p_capped"].items() if p > 0.5)[::-1]
        typer.echo(f"expected to reach their token budget before early stopping (capped): "
                   f"{sum(e['p_capped'].values()):.1f} of the {len(e['p_capped'])} runs left"
                   + ("; more likely than not: " + ", ".join(f"{r} ({p:.2f})" for p, r in likely) if likely else ""))


@grid_app.command("price")
def grid_price(
    specs: list[Path] = typer.Argument(..., help="grid spec(s) (TOML) whose cells are the candidates"),
    out: Path = typer.Option(..., help="candidates table (CSV) to write"),
    device: Optional[str] = typer.Option("cpu", help="the device whose speed prices the runs"),
    runs: Optional[Path] = typer.Option(None, "--runs", help="a grid directory: runs finished there are not "
                                                             "candidates, pre-training finished there is free, and "
                                                             "its finished runs calibrate the run lengths"),
):
    """Write the candidate runs of specs with their cost (the candidates table of docs/loss_grid.md)."""
    import csv
    import io

    import torch

    import loss_grid as lg
    from trainer.files import atomic_write_text
    from trainer.plan import RunLength, flops_per_token, group_seconds, pretrain_seconds, probe_tokens_per_s
    from trainer.scheduler import RunDir, n_params

    sps = _specs(specs)
    dev = _device(device)
    if runs is not None and not (runs / "runs").is_dir():
        _fail(f"{runs} is not a grid directory (it has no runs/)")
    torch.set_num_threads(1)
    length = RunLength.calibrated(runs)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(lg.CANDIDATE_COLUMNS)
    seen = set()
    for sp in sps:
        rd = RunDir(sp, runs, None, 1) if runs is not None else None
        cells = [c for c in sp.cells if rd is None or not rd.done(c)]
        # a fine-tuned run carries an equal share of its pre-training run's cost, unless that run is done
        users = {j.job_id: sum(c.pretrain_job == j.job_id for c in cells) for j in sp.pretrain_jobs}
        pre = {j.job_id: (0.0, 0.0) if rd is not None and not rd.job_needed(j) else
               (pretrain_seconds([j], probe_tokens_per_s(j.size, 1, j.settings.batch, dev.type)),
                j.tokens * flops_per_token(j.size)) for j in sp.pretrain_jobs if users[j.job_id]}
        for c in cells:
            if c.run_id in seen:
                continue
            seen.add(c.run_id)
            speed = probe_tokens_per_s(c.size, 1, c.settings.batch, dev.type)
            secs = group_seconds([c], speed, length)
            flops = length.within_budget(c) * flops_per_token(c.size)
            if c.pretrain_job:
                secs += pre[c.pretrain_job][0] / users[c.pretrain_job]
                flops += pre[c.pretrain_job][1] / users[c.pretrain_job]
            w.writerow([c.size, n_params(c.size), c.data_tokens, c.source, c.target, c.pretrain_tokens, c.seed,
                        c.pretrain_seed, f"{secs / 3600:.6g}", f"{flops:.6g}"])
    try:
        atomic_write_text(out, buf.getvalue())
    except OSError as e:
        _fail(_os_error(e))
    typer.echo(f"wrote {len(seen)} candidate runs to {out} ({length.describe()})")


@grid_app.command("status")
def grid_status(out: Path = typer.Argument(..., help="grid output directory"),
                pending: bool = typer.Option(False, "--pending", help="also list each spec's runs not finished")):
    """Finished, pending, failed and damaged runs per spec in a grid directory, and its pre-training runs done."""
    from trainer.export import status
    from trainer.spec import SpecError

    if not out.is_dir():
        _fail(f"{out} is not a directory")
    try:
        rows = status(out)
    except SpecError as e:
        _fail(str(e))
    if not rows:
        _fail(f"{out} holds no grid")
    t = Table()
    keys = ["spec", "total", "ok", "capped", "failed", "damaged", "pending", "saved", "pretrain"]
    for k in keys:
        t.add_column(k, no_wrap=True)
    for r in rows:
        t.add_row(*[str(r.get(k, 0)) for k in keys])
    console = Console()
    # in a log or a pipe the table keeps its full width: a spec's name is what `grid export --spec` takes
    console = console if console.is_terminal else Console(width=200)
    console.print(t)
    if pending:
        for r in rows:
            # the id without its settings hash: size, source, pre-training, D_F and seed say which cell
            names = sorted(rid.rsplit("-", 1)[0] for rid in r["pending_runs"])
            console.print(f"{r['spec']}: {len(names)} not finished" + (": " + ", ".join(names) if names else ""),
                          highlight=False)
    from trainer.scheduler import saved_states

    for s in saved_states(out):  # groups stopped part-way: where each resumes
        if "error" in s:
            console.print(f"saved state {s['path']}: unreadable ({s['error']})", highlight=False)
        else:
            console.print(f"saved state {s['path']}: step {s['step']} of at most {s['steps']}, {s['wall_s'] / 3600:.2f} h "
                          f"trained, commit {s['code_version'][:12]}; {', '.join(s['runs'])}", highlight=False)


@grid_app.command("quality")
def grid_quality(
    out_dir: Path = typer.Argument(..., help="grid output directory"),
    spec: Optional[str] = typer.Option(None, help="grid name, when the directory holds several"),
):
    """Capped and unresolved runs, seed and pre-training spreads, and the measured cost of a grid's finished runs."""
    from trainer.export import quality
    from trainer.spec import SpecError

    try:
        q = quality(out_dir, spec)
    except SpecError as e:
        _fail(str(e))
    n = q["finished"]
    share = lambda k: f"{q[k]} ({q[k] / n:.0%})" if n else "0"  # noqa: E731
    lines = [f"{q['spec']}: {n} of {q['expected']} runs finished",
             f"capped: {share('capped')}; failed: {share('failed')}",
             f"best at step 0 or the first evaluation after it: {len(q['best_at_first_eval'])}"
             + "".join(f"\n  {r}" for r in q["best_at_first_eval"])]

    def spreads(title, rows, key="data_tokens"):
        lines.append(title + ("" if rows else " none measured"))
        for r in rows:
            where = f" D_F {r[key]}" if key in r else ""
            where += f" -> {r['target']}" if "target" in r else ""
            where += f" p {r['pretrain_tokens']}" if r.get("pretrain_tokens") else ""
            lines.append(f"  {r['size']} {r['source']}{where}: {r['spread']:.3f} nats ({r['runs']} runs)")

    spreads(f"seed-to-seed spread (max - min loss) at the smallest D_F, {q['smallest_data_tokens']} bytes:",
            q["seed_spread"])
    spreads("spread from the choice of pre-training run (same cell and seed):", q["pretrain_run_spread"])
    spreads("pre-training seeds' spread of final validation loss:", q["pretrain_seed_spread"])
    lines.append(f"measured cost: runs {q['run_core_hours']:.2f} + pre-training {q['pretrain_core_hours']:.2f} "
                 f"core-hours (wall time of each group on one core); runs processed "
                 f"{q['run_tokens_per_core_s']:,.0f} tokens per core-second")
    typer.echo("\n".join(lines))


@grid_app.command("export")
def grid_export(
    out_dir: Path = typer.Argument(..., help="grid output directory"),
    out: Path = typer.Option(..., "--out", help="netCDF file to write"),
    spec: Optional[list[str]] = typer.Option(None, help="grid name, when the directory holds several; give it "
                                                       "more than once to export their union as one grid"),
):
    """Gather a grid's finished runs into the loss-grid netCDF."""
    from trainer.export import export
    from trainer.spec import SpecError

    if out.is_dir():
        _fail(f"--out {out} is a directory; give a file name")
    try:
        info = export(out_dir, out, spec)
    except SpecError as e:
        _fail(str(e))
    except OSError as e:
        _fail(_os_error(e))
    typer.echo(f"wrote {info['runs']} of {info['expected']} runs to {info['path']}")


@app.command()
def bench(
    device: Optional[str] = typer.Option(None, help="cpu or cuda (default: cuda if present)"),
    sizes: str = typer.Option("25k,100k,330k", help="sizes to measure"),
    large: str = typer.Option("19m", help="GPU: the size to measure MFU on"),
    members: int = typer.Option(16, min=1, help="GPU: cells per size in the packed/naive comparison"),
    steps: int = typer.Option(30, min=2, help="timed steps per measurement"),
    peak_tflops: Optional[float] = typer.Option(None, help="GPU: peak dense bf16 TFLOP/s (default: by device)"),
    out: Optional[Path] = typer.Option(None, help="also write the table as Markdown here"),
):
    """CPU: tokens/s and GFLOP/s of the training step against a plain loop and the fp32 matmul peak.
    GPU: packed scheduler against a naive loop, and MFU on a large size."""
    from trainer.bench import run_bench, run_cpu_bench

    dev = _device(device)
    if dev.type == "cpu":
        text = run_cpu_bench(sizes.split(","), steps, log=typer.echo)
    else:
        text = run_bench(sizes.split(","), large, members, steps, dev, peak_tflops, log=typer.echo)
    if out:
        out.write_text(text + "\n")


if __name__ == "__main__":
    sys.exit(app())
