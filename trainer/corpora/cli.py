"""`transfer-train corpora`: build, list, pack and sample the offline corpora."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from trainer.corpora import build as build_mod
from trainer.corpora.sources import DISTRIBUTIONS
from trainer.corpora.store import CorpusError, default_root, pack as pack_fn

app = typer.Typer(help="Offline byte-level corpora: build, list, pack, sample.", no_args_is_help=True)
console = Console(stderr=True, soft_wrap=True)

RootOpt = typer.Option(None, "--root", help="corpus root (default: $TRANSFER_CORPORA or <repo>/corpora)")
OnlyOpt = typer.Option(None, "--only", help="comma-separated distribution names")


def _names(only: Optional[str]) -> Optional[list[str]]:
    return [n.strip() for n in only.split(",") if n.strip()] if only else None


def _fail(e: Exception) -> None:
    console.print(f"[red]error:[/red] {escape(str(e))}", highlight=False)
    raise typer.Exit(1)


def _log(msg: str) -> None:
    console.print(f"[dim]{time.strftime('%H:%M:%S')}[/dim] {escape(msg)}", highlight=False)


@app.command()
def build(only: Optional[str] = OnlyOpt, root: Optional[Path] = RootOpt) -> None:
    """Fetch packages, extract, clean, dedup and split; reuses complete distributions."""
    root = root or default_root()
    t0 = time.time()
    try:
        build_mod.build(root, _names(only), _log)
    except CorpusError as e:
        _fail(e)
    except KeyboardInterrupt:
        _fail(CorpusError("build interrupted; finished distributions are kept, the rest will be rebuilt"))
    _log(f"done in {time.time() - t0:.0f} s; corpora in {root}")
    list_(root)


@app.command("list")
def list_(root: Optional[Path] = RootOpt) -> None:
    """Table of built distributions: sizes, documents, hash prefix, dedup rate."""
    root = root or default_root()
    try:
        rows = build_mod.list_rows(root)
    except CorpusError as e:
        _fail(e)
    table = Table(title=f"corpora in {root}")
    for col in ("name", "train MB", "val MB", "train docs", "val docs", "train sha256", "dedup rate"):
        table.add_column(col, justify="left" if col in ("name", "train sha256") else "right")
    for r in rows:
        rate = "-" if r["dedup_rate"] is None else f"{100 * r['dedup_rate']:.1f}%"
        table.add_row(r["name"], f"{r['train_bytes'] / 1e6:.2f}", f"{r['val_bytes'] / 1e6:.2f}",
                      str(r["train_docs"]), str(r["val_docs"]), r["sha256"], rate)
    Console().print(table)
    missing = sorted(set(DISTRIBUTIONS) - {r["name"] for r in rows})
    if missing:
        console.print(f"not built: {', '.join(missing)}")


@app.command()
def pack(out: Path = typer.Argument(..., help="the packed .tar to write"),
         max_mb: float = typer.Option(60.0, "--max-mb", help="upper bound on the packed file (MiB)"),
         only: Optional[str] = OnlyOpt, root: Optional[Path] = RootOpt,
         truncate: bool = typer.Option(False, "--truncate",
                                       help="cut train splits at document boundaries to fit, "
                                            "recording the cut in the packed manifest")) -> None:
    """Pack chosen distributions into one xz-compressed tar the trainer reads directly."""
    root = root or default_root()
    try:
        man = pack_fn(root, out, max_mb, _names(only), truncate, log=_log)
    except CorpusError as e:
        _fail(e)
    _log(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB): {', '.join(man['distributions'])}")


@app.command()
def sample(out: Path = typer.Argument(..., help="directory for the sample corpus root"),
           root: Optional[Path] = RootOpt,
           train_kb: int = typer.Option(150, help="train bytes per distribution (KB)"),
           val_kb: int = typer.Option(40, help="validation bytes per distribution (KB)")) -> None:
    """Cut a small corpus root from a built one (this is how tests/data/corpus_sample is made)."""
    root = root or default_root()
    try:
        build_mod.sample(root, out, train_kb * 1000, val_kb * 1000)
    except CorpusError as e:
        _fail(e)
    list_(out)
