"""The `bayes-transfer` command: fit, report, recommend, next-runs, demo.

Exit codes scripts can rely on:
  0  success
  1  user error (bad input, missing file, wrong law for the grid): one line on stderr, no traceback;
     also `next-runs` on a fit that did not converge (it writes nothing)
  2  usage error (unknown option, missing argument)
  3  the fit did not converge (r_hat, ESS or divergences); `fit`, `report` and `demo` still write
     their outputs, and `recommend` its answer, which say so; pass --allow-unconverged to exit 0 anyway
"""

from __future__ import annotations

import contextlib
import errno
import functools
import importlib
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Optional

import typer
from rich import box
from rich.console import Console
from rich.markdown import Markdown
from rich.markup import escape
from rich.table import Table

EXIT_USER, EXIT_UNCONVERGED = 1, 3
GRIDS_DIR = Path("data") / "grids"
MAIN_GRID = "cpu_text_to_python"  # what `demo` fits: the README's headline
# Sampler settings for `demo`: enough draws for bulk ESS >= 400 over 4 chains,
# small enough that all shipped grids fit in minutes on a 2-core CPU (fit's
# pooled dense mass matrix throughout). The transfer-gap grid's posterior has
# the terms A_p p^-alpha_p and G trading off: smaller steps and more draws for
# its tail ESS. The two-source grid's spread of the pre-training effect mixes
# slowly: 2000 draws keep its r_hat off the gate (1.006 at 1000, seed 0).
DEMO_SAMPLER = dict(chains=4, draws=1000)
DEMO_SAMPLER_FOR = {"cpu_transfer_gap": dict(draws=2000, target_accept=0.95),
                    "cpu_python_two_sources": dict(draws=2000)}
FAST_SAMPLER = dict(chains=2, draws=50, warmup=50)

app = typer.Typer(
    name="bayes-transfer",
    help="Scaling laws for transfer with honest uncertainty: fit loss grids, report, and recommend "
         "where the next budget should go.\n\nExit codes: 0 ok, 1 user error, 2 usage error, "
         "3 fit did not converge (unless --allow-unconverged).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console()
if not out.is_terminal:  # a log or a pipe: tables at full width, never cut to 80 columns
    out = Console(width=200)
err = Console(stderr=True)


def _show_warning(message, category, filename, lineno, file=None, line=None):
    """Warnings as one plain line each: users need the message, not our source line."""
    err.print(f"[yellow]warning:[/] {escape(str(message))}", highlight=False, soft_wrap=True)


@app.callback()
def _main():
    warnings.showwarning = _show_warning


class UserError(Exception):
    """An error in what the user asked for: reported in one line, exit 1."""


def _user_errors(func):
    """Turn input errors into one line on stderr and exit 1 (bugs still show a traceback)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except (UserError, ValueError, OSError) as e:
            err.print(f"[bold red]error:[/] {escape(_one_line(e))}", highlight=False, soft_wrap=True)
            raise typer.Exit(EXIT_USER) from None

    return wrapper


def _one_line(e: Exception) -> str:
    """An error as one line; an OS error names its file and what the system said."""
    if isinstance(e, OSError) and e.strerror:
        where = f"{e.filename}: " if e.filename else ""
        return f"{where}{e.strerror}" + (" (the disk is full)" if e.errno == errno.ENOSPC else "")
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _probe_folder(folder: Path, what: str) -> None:
    """Refuse a folder that cannot take new files, by making one there (permissions,
    read-only mounts and ownership all answer the same way)."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise UserError(f"cannot write the {what} in {folder}: {e.strerror or e}") from None


def _check_output_file(path: Path, what: str) -> None:
    """An output file's folder must exist and be writable: checked before any long computation."""
    if path.is_dir():
        raise UserError(f"the {what} {path} is a folder; give a file name")
    if not path.parent.is_dir():
        raise UserError(f"cannot write the {what} {path}: folder {path.parent} does not exist")
    _probe_folder(path.parent, what)


def _check_output_dir(path: Path, what: str) -> None:
    """An output folder must be a folder (or creatable) in a writable place: checked before any long computation."""
    if path.exists() and not path.is_dir():
        raise UserError(f"the {what} {path} exists and is not a folder")
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"cannot make the {what} {path}: {parent} is not a folder")
    _probe_folder(parent, what)


# ---------------------------------------------------------------- shared options

LAW_HELP = ("law to fit: transfer (scratch + fine-tuned jointly), transfer_gap (several pre-training "
            "amounts at one size), kaplan, chinchilla or data_constrained (scratch runs only; data_constrained "
            "needs tokens_seen), rectified (one fine-tuning curve per pre-trained model). Default: transfer_gap "
            "when one size has several pretrain_tokens, else transfer when fine-tuned runs exist, else kaplan")
Law = typer.Option(None, "--law", help=LAW_HELP)
ScratchLaw = typer.Option("kaplan", "--scratch-law", help="scratch-law form inside the transfer law: kaplan, chinchilla "
                                                           "or data_constrained")
Method = typer.Option("nuts", "--method", help="nuts (full posterior) or map (quick point estimate)")
Chains = typer.Option(4, "--chains", min=1, help="NUTS chains")
Draws = typer.Option(1000, "--draws", min=1, help="NUTS draws per chain after warm-up")
Warmup = typer.Option(None, "--warmup", min=1, help="NUTS warm-up iterations per chain (default: fit's, "
                                                   "bayes_transfer.fit.WARMUP)")
Seed = typer.Option(0, "--seed", help="random seed")
MassMatrix = typer.Option(None, "--mass-matrix",
                          help="how NUTS learns its mass matrix: pooled (a dense one from a pilot's draws of all "
                               "chains), diagonal or dense (NumPyro's windowed adaptation per chain), or auto "
                               "(fit's default: pooled up to 100 latent dimensions, diagonal above)")
TargetAccept = typer.Option(0.9, "--target-accept", min=0.5, max=0.999,
                            help="NUTS target acceptance: higher takes smaller steps (fewer divergences, slower)")
Allow = typer.Option(False, "--allow-unconverged", help="exit 0 even when the fit did not converge")
Budget = typer.Option(None, "--budget", help="money to spend, in your currency")
CostFinetune = typer.Option(None, "--cost-finetune", help="price of one fine-tuning token (byte of target data)")
CostPretrain = typer.Option(None, "--cost-pretrain", help="price of one pre-training token (byte of source data)")
CostParams = typer.Option(None, "--cost-params", help="price of one more parameter: the whole cost of training a "
                                                      "model one parameter larger at the current data")
PricePerFlop = typer.Option(None, "--price-per-flop", help="alternative to --cost-params: price of one training "
                                                           "FLOP (a parameter then costs 6 x (p + epochs x D_F) FLOPs, "
                                                           "epochs the grid's median)")
Currency = typer.Option("USD", "--currency", help="currency name shown with the costs")
Units = typer.Option(None, "--units", help="what the table's losses are in: nats or bits (cross-entropy), fraction or "
                                           "percent (error rate). Default: the grid's loss_units attribute, else nats")
Metric = typer.Option(None, "--metric", help="cross_entropy or error_rate. Default: the grid's metric attribute, "
                                             "else cross_entropy")
DataUnit = typer.Option(None, "--data-unit", help="what data_tokens counts: tokens, examples or images. Default: "
                                                  "the grid's data_unit attribute, else tokens")


def _laws():
    from bayes_transfer.laws import LAWS

    return LAWS


@contextlib.contextmanager
def _rich_progress():
    """Draw ``fit``'s sampling bar (tqdm) with rich."""
    from tqdm import TqdmExperimentalWarning
    from tqdm.rich import tqdm as rich_tqdm

    fit_module = importlib.import_module("bayes_transfer.fit")  # the package's `fit` is the function
    saved = fit_module.tqdm
    fit_module.tqdm = rich_tqdm
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", TqdmExperimentalWarning)
            yield
    finally:
        fit_module.tqdm = saved


def _sampler(chains, draws, warmup, seed, mass_matrix, target_accept) -> dict:
    """The sampler options of `fit` and `report`, as ``fit`` arguments."""
    from bayes_transfer.fit import MASS_MATRICES

    if mass_matrix is not None and mass_matrix not in MASS_MATRICES:
        raise typer.BadParameter(f"unknown mass matrix {mass_matrix!r}; choose from {', '.join(MASS_MATRICES)}",
                                 param_hint="--mass-matrix")
    given = dict(warmup=warmup, mass_matrix=mass_matrix)  # left out: fit's defaults
    return dict(chains=chains, draws=draws, seed=seed, target_accept=target_accept,
                **{k: v for k, v in given.items() if v is not None})


def _fit_grid(path: Path, law, scratch_law, method, sampler: dict, declared=None):
    """Fit a grid file; ``sampler``: chains, draws, warmup, seed and optionally mass_matrix, target_accept."""
    from bayes_transfer import laws
    from bayes_transfer.fit import WARMUP, default_law, fit
    from bayes_transfer.grid import load_grid

    if law is not None and law not in _laws():
        raise typer.BadParameter(f"unknown law {law!r}; choose from {', '.join(_laws())}", param_hint="--law")
    if method not in ("nuts", "map"):
        raise typer.BadParameter(f"unknown method {method!r}; choose nuts or map", param_hint="--method")
    # capped runs stay: the fit takes their loss as an upper bound (censored)
    grid = load_grid(path, include_capped=True, **(declared or {}))
    law = law or default_law(grid)
    # progress bars on a terminal only: in logs they are noise
    progress = sys.stderr.isatty()
    options = dict(sampler, method=method, progress=progress)
    if laws.get(law).kind == "transfer":
        options["scratch_law"] = scratch_law
    label = "MAP" if method == "map" else \
        f"NUTS {sampler['chains']} chains x {sampler['draws']} draws (+{sampler.get('warmup', WARMUP)} warm-up)" + \
        (f", {sampler['mass_matrix']} mass matrix" if sampler.get("mass_matrix") else "")
    err.print(f"[bold]fitting[/] {law} to {escape(repr(grid))}: {label}", highlight=False, soft_wrap=True)
    with warnings.catch_warnings(), (_rich_progress() if progress else contextlib.nullcontext()):
        warnings.filterwarnings("ignore", message=".*did not converge.*")
        return fit(grid, law=law, **options)


def _converged_or_exit(fit, allow: bool, what: str) -> None:
    diag = fit.diagnostics()
    if fit.point_estimate and diag.converged:
        err.print(f"[yellow]note:[/] {escape(str(diag))}", highlight=False)
        return
    if diag.converged:
        err.print(f"[green]{escape(str(diag))}[/]", highlight=False)
        return
    err.print(f"[bold red]THE FIT DID NOT CONVERGE[/] ({what}): {escape(str(diag))}", highlight=False)
    if not allow:
        err.print("exit 3: rerun with more --draws/--warmup, or pass --allow-unconverged", highlight=False)
        raise typer.Exit(EXIT_UNCONVERGED)


def _summary_table(fit) -> Table:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # r_hat of a fixed parameter (nu) is 0/0
        summary = fit.summary()
    from bayes_transfer.report import units_text

    table = Table(title=f"posterior of the {fit.law} law ({units_text(fit.grid)})", box=box.SIMPLE_HEAD,
                  pad_edge=False)
    # medians (means of heavy-tailed parameters mislead); width ratio = posterior / prior 90% width
    columns = {"median": "{:.3g}", "5%": "{:.3g}", "95%": "{:.3g}", "width ratio": "{:.2f}", "r_hat": "{:.3f}",
               "ess_bulk": "{:.0f}", "ess_tail": "{:.0f}"}
    names = {"ess_bulk": "bulk ESS", "ess_tail": "tail ESS", "width ratio": "post/prior"}
    table.add_column("parameter", no_wrap=True)
    for col in columns:
        table.add_column(names.get(col, col), justify="right", no_wrap=True)
    table.add_column("", no_wrap=True)
    for name, row in summary.iterrows():
        table.add_row(escape(str(name)), *[fmt.format(row[c]) for c, fmt in columns.items()],
                      "prior-driven" if row["prior-driven"] else "")
    return table


# ---------------------------------------------------------------- commands


@app.command("fit")
@_user_errors
def fit_cmd(
    grid: Path = typer.Argument(..., help="loss grid: the trainer's netCDF, or a CSV table with n_params, "
                                          "data_tokens, loss (and source, target, pretrain_tokens, seed)"),
    law: Optional[str] = Law,
    out_path: Optional[Path] = typer.Option(None, "--out", help="fit file to write (default: GRID_STEM.LAW.fit.nc)"),
    scratch_law: str = ScratchLaw,
    method: str = Method,
    chains: int = Chains,
    draws: int = Draws,
    warmup: Optional[int] = Warmup,
    seed: int = Seed,
    mass_matrix: Optional[str] = MassMatrix,
    target_accept: float = TargetAccept,
    allow_unconverged: bool = Allow,
    units: Optional[str] = Units,
    metric: Optional[str] = Metric,
    data_unit: Optional[str] = DataUnit,
):
    """Fit a law to a loss grid and save the posterior as a netCDF fit file."""
    _check_output_file(out_path or Path.cwd() / f"{grid.stem}.fit.nc", "fit file")
    sampler = _sampler(chains, draws, warmup, seed, mass_matrix, target_accept)
    fit = _fit_grid(grid, law, scratch_law, method, sampler, dict(units=units, metric=metric, data_unit=data_unit))
    path = out_path or Path(f"{grid.stem}.{fit.law}.fit.nc")
    fit.save(path)
    out.print(_summary_table(fit))
    err.print(f"wrote {escape(str(path))}", highlight=False)
    _converged_or_exit(fit, allow_unconverged, f"saved to {path} anyway")


@app.command("report")
@_user_errors
def report_cmd(
    source: Path = typer.Argument(..., help="a fit file (from `fit`) or a loss grid (fitted first)"),
    out_dir: Path = typer.Option(..., "--out", help="folder for index.html, summary.md and the figures"),
    law: Optional[str] = Law,
    budget: Optional[float] = Budget,
    cost_finetune: Optional[float] = CostFinetune,
    cost_pretrain: Optional[float] = CostPretrain,
    cost_params: Optional[float] = CostParams,
    currency: str = Currency,
    scratch_law: str = ScratchLaw,
    method: str = Method,
    chains: int = Chains,
    draws: int = Draws,
    warmup: Optional[int] = Warmup,
    seed: int = Seed,
    mass_matrix: Optional[str] = MassMatrix,
    target_accept: float = TargetAccept,
    allow_unconverged: bool = Allow,
    units: Optional[str] = Units,
    metric: Optional[str] = Metric,
    data_unit: Optional[str] = DataUnit,
    prior_sensitivity: bool = typer.Option(False, "--prior-sensitivity",
                                           help="refit with every law prior twice as wide and show the headline "
                                                "numbers both ways (one more fit)"),
):
    """Write the posterior report (HTML + PNG + Markdown) of a fit, or of a grid after fitting it.

    Without prices the recommendation uses illustrative ones and says so. The report is written
    beside --out and swapped in whole: a failed report leaves an existing one as it was."""
    from bayes_transfer.allocate import positive
    from bayes_transfer.fit import load_fit
    from bayes_transfer.report import is_fit_file, report

    if (budget is None) != (cost_finetune is None):
        raise UserError("give --budget and --cost-finetune together (or neither, for illustrative prices)")
    for name, value in (("budget", budget), ("cost_finetune", cost_finetune), ("cost_pretrain", cost_pretrain),
                        ("cost_params", cost_params)):
        if value is not None:
            positive(name, value)  # before any fitting: bad prices fail fast
    _check_output_dir(out_dir, "report folder")
    declared = dict(units=units, metric=metric, data_unit=data_unit)
    if not source.exists():
        raise UserError(f"no such file: {source}")
    if is_fit_file(source):
        if law is not None or any(v is not None for v in declared.values()):
            raise UserError(f"{source} is a fit file (law and units fixed when fitted); drop --law/--units/--metric/--data-unit")
        fit = load_fit(source)
    else:
        fit = _fit_grid(source, law, scratch_law, method,
                        _sampler(chains, draws, warmup, seed, mass_matrix, target_accept), declared)
    with err.status("writing the report"):
        index = report(fit, out_dir, budget=budget, cost_finetune=cost_finetune, cost_pretrain=cost_pretrain,
                       cost_params=cost_params, currency=currency, prior_sensitivity=prior_sensitivity)
    out.print(str(index))
    _converged_or_exit(fit, allow_unconverged, "the report says so at the top")


@app.command("recommend")
@_user_errors
def recommend_cmd(
    fit_file: Path = typer.Argument(..., help="a fit file written by `bayes-transfer fit`"),
    budget: float = typer.Option(..., "--budget", help="money to spend, in your currency"),
    cost_finetune: float = typer.Option(..., "--cost-finetune", help="price of one fine-tuning token (byte)"),
    cost_pretrain: Optional[float] = CostPretrain,
    cost_params: Optional[float] = CostParams,
    price_per_flop: Optional[float] = PricePerFlop,
    n_params: Optional[float] = typer.Option(None, "--n-params", help="current model size (default: the grid's largest)"),
    data_tokens: Optional[float] = typer.Option(None, "--data-tokens", help="current fine-tuning data in bytes (default: the grid's largest)"),
    pretrain_tokens: Optional[float] = typer.Option(None, "--pretrain-tokens", help="current pre-training data in bytes"),
    pair: Optional[str] = typer.Option(None, "--pair", help="source->target pair, when the fit has several"),
    currency: str = Currency,
    allow_unconverged: bool = Allow,
):
    """Should the next budget go to fine-tuning data, pre-training data or a bigger model?"""
    from bayes_transfer.allocate import positive, recommend
    from bayes_transfer.fit import load_fit

    if cost_params is not None and price_per_flop is not None:
        raise UserError("give --cost-params or --price-per-flop, not both")
    for name, value in (("budget", budget), ("cost_finetune", cost_finetune), ("cost_pretrain", cost_pretrain),
                        ("cost_params", cost_params), ("price_per_flop", price_per_flop)):
        if value is not None:
            positive(name, value)  # before the fit file is read: bad prices fail fast
    fit = load_fit(fit_file)
    _converged_or_exit(fit, allow_unconverged, "recommendations from it would not be trustworthy")
    current = {k: v for k, v in (("n_params", n_params), ("data_tokens", data_tokens),
                                 ("pretrain_tokens", pretrain_tokens)) if v is not None}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        rec = recommend(fit, budget=budget, cost_finetune=cost_finetune, cost_pretrain=cost_pretrain,
                        cost_params=cost_params, current=current or None, pair=pair, currency=currency,
                        price_per_flop=price_per_flop, allow_unconverged=allow_unconverged)
    text = rec.to_markdown()
    if sys.stdout.isatty():
        out.print(Markdown(text))
    else:
        sys.stdout.write(text)


@app.command("demo")
@_user_errors
def demo_cmd(
    out_dir: Path = typer.Option(Path("demo-report"), "--out", help="folder for the report(s)"),
    grids_dir: Path = typer.Option(GRIDS_DIR, "--grids", help="folder of shipped loss grids (*.nc)"),
    grid: str = typer.Option(MAIN_GRID, "--grid", help="which shipped grid (its file name without .nc), or 'all'"),
    fast: bool = typer.Option(False, "--fast", help="tiny sampler settings (a smoke test, will not converge)"),
    allow_unconverged: bool = Allow,
):
    """Fit the main shipped grid (or another, or all) and write the report(s): the main job, in minutes."""
    from bayes_transfer.report import report

    shipped = sorted(grids_dir.glob("*.nc")) if grids_dir.is_dir() else []
    if not shipped:
        raise UserError(f"no loss grid shipped in {grids_dir}/; nothing to demo")
    grids = shipped if grid == "all" else [p for p in shipped if p.stem == grid]
    if not grids:
        raise UserError(f"no grid {grid!r} in {grids_dir}/ (shipped: {', '.join(p.stem for p in shipped)}); "
                        "pass --grid NAME or --grid all")
    _check_output_dir(out_dir, "demo folder")
    fits, failed = [], []
    for path in grids:
        sampler = dict(FAST_SAMPLER if fast else {**DEMO_SAMPLER, **DEMO_SAMPLER_FOR.get(path.stem, {})}, seed=0)
        fit = _fit_grid(path, None, "kaplan", "nuts", sampler)
        target = out_dir if len(grids) == 1 else out_dir / path.stem
        with err.status(f"writing the report for {path.name}"):
            index = report(fit, target, prior_sensitivity=True)
        converged = fit.diagnostics().converged
        if not converged:
            failed.append(path.name)
        fits.append((path, fit, index, converged))
        out.print(escape(f"{path.name}: {fit.law} -> {index}") + ("" if converged else "  [bold red](NOT CONVERGED)[/]"))
    if len(grids) > 1:
        _write_demo_index(out_dir, fits)
        out.print(str(out_dir / "index.html"))
    if failed and not allow_unconverged:
        err.print(f"[bold red]THE FIT DID NOT CONVERGE[/] for {', '.join(failed)} (the reports say so); exit 3",
                  highlight=False)
        raise typer.Exit(EXIT_UNCONVERGED)


def _write_demo_index(out_dir: Path, fits) -> None:
    """A landing page linking one report per grid."""
    import html

    from bayes_transfer.atomic import atomic_write
    from bayes_transfer.report import CSS

    items = "".join(
        f'<li><a href="{index.parent.name}/index.html">{html.escape(path.name)}</a>: law {fit.law}, '
        f"{html.escape(repr(fit.grid))}{'' if ok else ' <strong>(NOT CONVERGED)</strong>'}</li>"
        for path, fit, index, ok in fits)
    doc = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>bayes-transfer demo</title>'
           f"<style>{CSS}</style></head><body><h1>bayes-transfer demo</h1><ul>{items}</ul></body></html>\n")
    atomic_write(out_dir / "index.html", doc.encode())


@app.command("next-runs")
@_user_errors
def next_runs_cmd(
    fit_file: str = typer.Argument(..., help="a fit file from `bayes-transfer fit`, or `prior` to choose a first "
                                             "batch from the prior alone (law: --law)"),
    target: str = typer.Option(..., "--target", help="what to sharpen: multiplier:N=..,D_F=..[,pair=..], "
                                                     "D_T:N=..,D_F=.., a parameter (beta, G:pair=.., "
                                                     "alpha_N:target=..), or regret (the recommend decision)"),
    budget: float = typer.Option(..., "--budget", help="compute to spend, in the units of --cost"),
    candidates: Path = typer.Option(..., "--candidates", help="candidates table (CSV) from `transfer-train grid price`"),
    out_path: Path = typer.Option(..., "--out", help="trainer spec to write; the chosen runs' table goes "
                                                     "beside it as OUT.runs.csv"),
    cost: str = typer.Option("cost_core_hours", "--cost", help="cost column: cost_core_hours or cost_flops"),
    law: str = typer.Option("transfer", "--law", help="with `prior`: the law whose prior is used"),
    plan_budget: Optional[float] = typer.Option(None, "--plan-budget", help="regret target: the budget recommend plans"),
    cost_finetune: Optional[float] = CostFinetune,
    cost_pretrain: Optional[float] = CostPretrain,
    cost_params: Optional[float] = CostParams,
    worlds: int = typer.Option(256, "--worlds", min=2, help="simulated outcomes per candidate"),
    method: Optional[str] = typer.Option(None, "--method", help="reweight (the fit's draws; default for a fit) or "
                                                                "linear (Bayes-linear; default for `prior`)"),
    seed: int = Seed,
    allow_unconverged: bool = typer.Option(False, "--allow-unconverged", help="use a fit that did not converge"),
):
    """Which runs next: the candidates that most sharpen --target per unit of compute, as a trainer spec."""
    from bayes_transfer.atomic import atomic_write
    from bayes_transfer.design import next_runs, prior_fit
    from bayes_transfer.fit import load_fit

    decision = None
    if target.split(":")[0].strip() == "regret":
        if plan_budget is None or cost_finetune is None:
            raise UserError("target regret needs --plan-budget and --cost-finetune (and --cost-params or "
                            "--cost-pretrain): the decision whose regret the runs should reduce")
        decision = {k: v for k, v in (("budget", plan_budget), ("cost_finetune", cost_finetune),
                                      ("cost_pretrain", cost_pretrain), ("cost_params", cost_params)) if v is not None}
    if not budget > 0:
        raise UserError(f"--budget must be positive, got {budget:g}")
    if not candidates.is_file():
        raise UserError(f"no such candidates table: {candidates}")
    if fit_file == "prior":
        fit = prior_fit(candidates, law=law, seed=seed)
    else:
        fit = load_fit(fit_file)
        if not (allow_unconverged or fit.converged):
            raise UserError(f"the fit did not converge ({fit.diagnostics()}); refit, or pass --allow-unconverged")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = next_runs(fit, candidates, target=target, budget=budget, cost=cost, decision=decision,
                        n_worlds=worlds, method=method, seed=seed, allow_unconverged=allow_unconverged)
    if res.table.empty:
        raise UserError("no affordable candidate is expected to sharpen the target; nothing written")
    res.spec()  # a spec that cannot be written fails here, before anything is
    path = res.write_spec(out_path)
    table_path = atomic_write(out_path.with_name(f"{out_path.stem}.runs.csv"),
                              res.table.to_csv(index=False).encode())
    sys.stdout.write(res.to_markdown())
    err.print(f"wrote {escape(str(path))} and {escape(str(table_path))}; train them with "
              f"`transfer-train grid run {escape(str(path))} --out DIR` (the fitted grid's DIR reuses its "
              f"pre-training)", highlight=False)


if __name__ == "__main__":
    app()
