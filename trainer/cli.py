"""`transfer-train`: corpora, single runs, grids and the GPU benchmark."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from trainer.corpora.cli import app as corpora_app

app = typer.Typer(help="Train GPT loss grids for scaling laws of transfer.", no_args_is_help=True)
app.add_typer(corpora_app, name="corpora")
grid_app = typer.Typer(help="Run, inspect and export grids of runs from a TOML spec.", no_args_is_help=True)
app.add_typer(grid_app, name="grid")
console = Console(stderr=True)


def _fail(msg: str) -> None:
    console.print(f"[red]error:[/red] {msg}")
    raise typer.Exit(2)


def _device(name: Optional[str]):
    import torch

    from trainer.train import device_default

    return torch.device(name) if name else device_default()


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
    compile: Optional[bool] = typer.Option(None, "--compile/--no-compile", help="torch.compile (default: on CUDA)"),
):
    """Train one cell (from scratch, or fine-tuned from --init) and write its result JSON."""
    from trainer.corpora import default_root
    from trainer.data import Corpora, Stream, source_mix, stable_int
    from trainer.grid import CTX, atomic_write_json, cell_settings
    from trainer.model import SIZES, config_for
    from trainer.train import Member, Settings, load_checkpoint, train_group

    try:
        if size not in SIZES:
            raise ValueError(f"unknown model size {size!r}; known: {', '.join(SIZES)}")
        if data_tokens < CTX + 1:
            raise ValueError(f"--data-tokens must be at least one sequence ({CTX + 1}), got {data_tokens}")
        cfg = config_for(size)
        state = load_checkpoint(init, cfg) if init else None
        cp = Corpora(corpora or default_root())
        source_mix(target)
        sub = cp.subset(target, data_tokens, seed)
        val = Stream([cp.split(target, "val")], [1.0])
    except (ValueError, FileNotFoundError) as e:
        _fail(str(e))
    st = cell_settings({}, size, data_tokens)
    s = Settings(**{k: st[k] for k in ("lr", "batch", "eval_interval", "patience", "min_delta", "warmup", "eval_seqs",
                                       "max_steps", "max_epochs")})
    m = Member(f"{target}.{size}.d{data_tokens}.s{seed}", stable_int("run", seed, size, target),
               Stream([sub], [1.0]), val, init=state, data_tokens=data_tokens)
    r = train_group(cfg, [m], s, device=_device(device), compile=compile,
                    progress=lambda msg: console.print(msg, highlight=False))[0]
    atomic_write_json(out, dict(size=size, target=target, init=str(init) if init else None, settings=st,
                                result=r, manifest=cp.manifest["distributions"]))
    typer.echo(f"{r['status']}: loss {r['loss']:.4f} nats/byte at step {r['best_step']} ({r['steps']} steps) -> {out}")


@grid_app.command("run")
def grid_run(
    specs: list[Path] = typer.Argument(..., help="grid spec(s) (TOML), run in order into the same directory"),
    out: Path = typer.Option(..., help="output directory (shared by specs whose runs overlap)"),
    corpora: Optional[Path] = typer.Option(None, help="corpus root dir or packed .tar"),
    time_limit: Optional[float] = typer.Option(None, help="seconds (all specs together): start no new work past "
                                               "this, then exit 0"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the runs and an estimated cost, train nothing"),
    device: Optional[str] = typer.Option(None, help="cpu or cuda (default: cuda if present)"),
    compile: Optional[bool] = typer.Option(None, "--compile/--no-compile",
                                           help="torch.compile (default: on CUDA for N >= 2e6)"),
    executor: Optional[str] = typer.Option(None, help="run through submitit: slurm, local or inprocess"),
    chunk: int = typer.Option(4, help="with --executor: groups per array task"),
    partition: Optional[str] = typer.Option(None, help="with --executor slurm: the partition"),
    workers: int = typer.Option(1, help="groups trained at once, each in its own process (shares one GPU)"),
):
    """Run every pending run of one or more grids (resumable: finished runs are kept)."""
    import time

    from trainer.grid import SpecError, load_spec, run_grid

    try:
        sps = [load_spec(s) for s in specs]
    except SpecError as e:
        _fail(str(e))
    if dry_run:
        for sp in sps:
            _print_dry_run(sp, out)
        return
    t0 = time.monotonic()
    log = lambda m: console.print(m, highlight=False)  # noqa: E731
    for sp in sps:
        try:
            if executor:
                from trainer.slurm import submit_grid

                summary = submit_grid(sp, out, corpora, executor=executor, chunk=chunk, partition=partition, log=log)
            else:
                left = None if time_limit is None else max(0.0, time_limit - (time.monotonic() - t0))
                summary = run_grid(sp, out, corpora, time_limit=left, device=_device(device), compile=compile,
                                   workers=workers, log=log)
        except (SpecError, ValueError, FileNotFoundError) as e:
            _fail(str(e))
        typer.echo(json.dumps(summary))


def _print_dry_run(sp, out: Path) -> None:
    from trainer.grid import Grid, cell_groups, estimate, pretrain_groups

    g = Grid(sp, out, None)
    t = Table(title=f"{sp.name}: {len(sp.pretrain_jobs)} pre-training runs, {len(sp.cells)} runs")
    for col in ("group", "size", "kind", "D_F", "members", "done"):
        t.add_column(col)
    for i, grp in enumerate(pretrain_groups(sp)):
        t.add_row(f"P{i}", grp[0].size, "pretrain " + ",".join(j.source for j in grp), f"{grp[0].tokens:.3g}",
                  str(len(grp)), str(sum(g.job_done(j) for j in grp)))
    for i, grp in enumerate(cell_groups(sp)):
        kind = "scratch" if grp[0].source == "none" else "finetune"
        t.add_row(f"G{i}", grp[0].size, kind, f"{grp[0].data_tokens:.3g}", str(len(grp)),
                  str(sum(g.done(c) for c in grp)))
    Console().print(t)
    e = estimate(sp, g)
    typer.echo(f"estimated cost of what remains, on one H100: pre-training {e['pretrain_s']:.0f} s + runs {e['runs_s']:.0f} s "
               f"= {e['total_s'] / 60:.1f} min (rough; runs end by early stopping)")


@grid_app.command("status")
def grid_status(out: Path = typer.Argument(..., help="grid output directory")):
    """Finished, pending and failed runs per spec in a grid directory."""
    from trainer.grid import status

    rows = status(out)
    if not rows:
        _fail(f"{out} holds no grid")
    t = Table()
    keys = ["spec", "total", "ok", "capped", "failed", "pending"]
    for k in keys:
        t.add_column(k)
    for r in rows:
        t.add_row(*[str(r.get(k, 0)) for k in keys])
    Console().print(t)


@grid_app.command("export")
def grid_export(
    out_dir: Path = typer.Argument(..., help="grid output directory"),
    out: Path = typer.Option(..., "--out", help="netCDF file to write"),
    spec: Optional[str] = typer.Option(None, help="grid name, when the directory holds several"),
):
    """Gather a grid's finished runs into the loss-grid netCDF."""
    from trainer.grid import SpecError, export

    try:
        info = export(out_dir, out, spec)
    except SpecError as e:
        _fail(str(e))
    typer.echo(f"wrote {info['runs']} of {info['expected']} runs to {info['path']}")


@app.command()
def bench(
    peak_tflops: Optional[float] = typer.Option(None, help="peak dense bf16 TFLOP/s (default: looked up by device)"),
    sizes: str = typer.Option("25k,100k,330k", help="the small sizes to compare packed vs naive on"),
    large: str = typer.Option("19m", help="the size to measure MFU on"),
    members: int = typer.Option(16, help="cells per size in the packed/naive comparison"),
    steps: int = typer.Option(60, help="timed steps per measurement"),
    device: Optional[str] = typer.Option(None),
    out: Optional[Path] = typer.Option(None, help="also write the table as Markdown here"),
):
    """Aggregate tokens/s: packed scheduler vs a naive eager loop, and MFU on a large size."""
    from trainer.bench import run_bench

    text = run_bench(sizes.split(","), large, members, steps, _device(device), peak_tflops, log=typer.echo)
    if out:
        out.write_text(text + "\n")


if __name__ == "__main__":
    sys.exit(app())
