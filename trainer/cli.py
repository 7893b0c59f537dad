"""`transfer-train`: corpora, single runs, grids and the GPU benchmark."""
import typer

from trainer.corpora.cli import app as corpora_app

app = typer.Typer(help="Train GPT loss grids for scaling laws of transfer.", no_args_is_help=True)
app.add_typer(corpora_app, name="corpora")
