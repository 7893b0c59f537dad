"""Other labs' published runs fitted with this package's laws, beside the fits the authors published.

    python scripts/external_fits.py                 # every dataset, default sampler; writes docs/external.md
    python scripts/external_fits.py --fast          # tiny sampler: a smoke test (will not converge)
    python scripts/external_fits.py --only porian   # refit some datasets (the page keeps the others)
    python scripts/external_fits.py --write-grids   # rewrite data/external/*/grid.csv from the copied files

Each dataset is turned into a grid table in the loss-grid contract (what its
loss and its data count are declared in the table's attributes; see
docs/loss_grid.md), loaded with ``load_grid`` and fitted with ``fit``: the
public API, as a user would. Redistributable datasets are in
data/external/ (licences and sources in data/external/README.md); the two
without a licence (Mikami et al., Li et al.) are read from the folder named
by BT_EXTERNAL_DATA and skipped, saying so, when it is not given.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "data" / "external"
# Datasets that may not be redistributed are not in the repository: the folder holding
# them is named by BT_EXTERNAL_DATA (unset: they are skipped, saying so).
EXTERNAL_DATA = Path(os.environ["BT_EXTERNAL_DATA"]) if os.environ.get("BT_EXTERNAL_DATA") else None
PAGE = REPO / "docs" / "external.md"
PROB = 0.9
DEFAULT_SAMPLER = dict(chains=4)  # fit()'s own draws, warm-up and mass matrix, unless a dataset says otherwise
FAST_SAMPLER = dict(chains=2, draws=50, warmup=50)

CE = dict(metric="cross_entropy", loss_units="nats", data_unit="tokens")


@dataclass
class Published:
    """A published value: point, and its interval or standard error where the authors gave one."""

    value: float
    low: float | None = None
    high: float | None = None
    se: float | None = None

    def text(self) -> str:
        if self.se is not None:
            return f"{self.value:.4g} (SE {self.se:.3g}; ±1.645 SE: {self.value - 1.645 * self.se:.4g} to {self.value + 1.645 * self.se:.4g})"
        if self.low is not None:
            return f"{self.value:.4g} [{self.low:.4g}, {self.high:.4g}]"
        return f"{self.value:.4g}"

    def interval(self):
        if self.se is not None:
            return self.value - 1.645 * self.se, self.value + 1.645 * self.se
        return (self.low, self.high) if self.low is not None else (self.value, self.value)


@dataclass
class Dataset:
    key: str
    title: str
    source: str
    law: str
    table: Callable[[], pd.DataFrame]  # the grid table, attrs declaring its units
    selection: str  # which rows were used, and why
    published: dict[str, Published] = field(default_factory=dict)
    published_note: str = ""
    derived: dict[str, Callable] = field(default_factory=dict)  # name -> f(posterior) -> draws
    fit_options: dict = field(default_factory=dict)
    shipped: bool = True
    why: str = ""  # what the comparison can and cannot show
    summary: Callable | None = None  # (grid, fit) -> table lines, in place of the per-parameter table
    check: Callable | None = None  # (grid) -> lines: the published values held against these runs

    @property
    def available(self) -> bool:
        return self.shipped or (EXTERNAL_DATA is not None and (EXTERNAL_DATA / self.folder).is_dir())

    @property
    def folder(self) -> str:
        return {"mikami": "mikami2022_syn2real_transfer", "li": "li2025_misfitting"}.get(self.key, "")


def _with(df: pd.DataFrame, **attrs) -> pd.DataFrame:
    df = df.reset_index(drop=True)
    df.attrs.update(attrs)
    return df


# ---------------------------------------------------------------- the datasets as grid tables


def epoch_table() -> pd.DataFrame:
    raw = pd.read_csv(SHIPPED / "epoch2024_chinchilla" / "svg_extracted_data.csv")
    n = raw["Model Size"]
    return _with(pd.DataFrame({"n_params": n, "data_tokens": raw["Training FLOP"] / (6.0 * n), "loss": raw["loss"],
                               "target": "massivetext", "training_flop": raw["Training FLOP"]}),
                 **CE, token="sentencepiece", vocab_size=32000)


def muennighoff_table() -> pd.DataFrame:
    raw = pd.read_csv(SHIPPED / "muennighoff2023_data_constrained" / "c4_val_losses.csv")
    # runs named *opt* (8b7178b25bopt, 4b284b12bc4opt2) are variants with other settings; the first
    # repeats the cell of 8b7178b25b exactly. One setting throughout: they are left out.
    raw = raw[~raw["run_name"].str.contains("opt")]
    # Two runs (100M unique tokens repeated 460 and 660 times) end above a uniform guess over the
    # vocabulary: they diverged. Marked failed, so the loader excludes them and says so.
    vocab = 50257
    diverged = raw["loss"] > np.log(vocab)
    return _with(pd.DataFrame({"n_params": raw["n_params"], "data_tokens": raw["unique_tokens"],
                               "tokens_seen": raw["data_tokens"], "loss": raw["loss"], "seed": raw["seed"],
                               "target": "c4", "status": np.where(diverged, "failed", "ok"),
                               "status_reason": np.where(diverged, f"loss above ln({vocab}) nats: diverged", ""),
                               "epochs": raw["epochs"], "run_name": raw["run_name"]}),
                 **CE, token="gpt2-bpe", vocab_size=vocab)


MUENNIGHOFF_PUBLISHED = dict(E=1.869, A=520.8, B=1487.7, alpha_N=0.3526596, alpha_D=0.3526596, R_D_star=15.387756,
                             R_N_star=5.309743)


def muennighoff_check(grid) -> list[str]:
    """How well the authors' seven values describe these runs (their E, A, B, exponents came from other runs)."""
    from bayes_transfer import laws

    r = grid.runs
    N, U, seen = (r[c].to_numpy(float) for c in ("n_params", "data_tokens", "tokens_seen"))
    p = MUENNIGHOFF_PUBLISHED
    resid = np.log(laws.scratch("data_constrained").loss(N, U, p, epochs=seen / U)) - np.log(r["loss"].to_numpy(float))
    plain = (seen == U) & (N <= laws.compute_optimal_params(U, p["A"], p["B"], p["alpha_N"], p["alpha_D"]))
    return [f"Held against these runs, the authors' seven values predict log loss {resid.mean():+.3f} off on "
            f"average (root mean square {np.sqrt(np.mean(resid ** 2)):.3f}); on the {int(plain.sum())} one-epoch "
            f"runs no larger than compute-optimal for their data, where neither R* acts, {resid[plain].mean():+.3f}. "
            "Their E, A, B and exponents set the level these runs are measured against, so their R* and ours "
            "answer to different baselines."]


PORIAN_SETTING = dict(dataset="rw", hparams="tuned", warmup="short", decay="const", param_count="standard",
                      loss_split="val")


def porian_table() -> pd.DataFrame:
    raw = pd.read_csv(SHIPPED / "porian2024_resolving_discrepancies" / "isoflop_points.csv")
    keep = np.logical_and.reduce([raw[k] == v for k, v in PORIAN_SETTING.items()])
    raw = raw[keep]
    return _with(pd.DataFrame({"n_params": raw["n_params"], "data_tokens": raw["data_tokens"], "loss": raw["loss"],
                               "target": "refinedweb", "flops": raw["flops"]}), **CE)


def gadre_table() -> pd.DataFrame:
    raw = pd.read_csv(SHIPPED / "gadre2024_overtraining" / "model_losses.csv")
    # one target per training set: every run is evaluated on C4 validation
    return _with(pd.DataFrame({"n_params": raw["n_params"], "data_tokens": raw["data_tokens"], "loss": raw["loss"],
                               "target": raw["dataset_name"], "tokens_per_param_x20": raw["chinchilla_multiplier"]}),
                 **CE, token="gpt-neox-bpe", vocab_size=50432)


def li_table() -> pd.DataFrame:
    raw = pd.read_csv(EXTERNAL_DATA / "li2025_misfitting" / "best_lr_runs.csv")
    raw = raw[raw["n_params"] < 1e9]  # the stored fit uses the models below 1B
    return _with(pd.DataFrame({"n_params": raw["n_params"], "data_tokens": raw["data_tokens"], "loss": raw["loss"],
                               "target": "c4", "peak_lr": raw["peak_lr"]}), **CE)


def mikami_table() -> pd.DataFrame:
    raw = pd.read_csv(EXTERNAL_DATA / "mikami2022_syn2real_transfer" / "imagenet_final_error.csv")
    keep = (raw["model"] == "r50") & (raw["pscale"] == "64k") & raw["source"].isin(["none", "synthetic_mulclass"])
    raw = raw[keep]
    return _with(pd.DataFrame({"n_params": raw["n_params"], "data_tokens": raw["data_tokens"],
                               "pretrain_tokens": raw["pretrain_tokens"], "loss": raw["loss"],
                               "source": raw["source"], "target": "imagenet"}),
                 metric="error_rate", loss_units="fraction", data_unit="images")


def lin_table() -> pd.DataFrame:
    raw = pd.read_csv(SHIPPED / "lin2024_finetuning_scaling_law" / "finetune_loss_long.csv")
    return _with(raw[["n_params", "data_tokens", "loss", "source", "target"]], metric="cross_entropy",
                 loss_units="nats", data_unit="examples")


def lin_summary(grid, result) -> list[str]:
    """Per dataset, across its models: beta, and the pre-learned data D_l^(1/beta) in examples
    against the smallest fine-tuning set measured (200 examples)."""
    post = result.posterior
    smallest = float(grid.runs["data_tokens"].min())
    lines = ["| dataset | models | beta: median of medians [range] | pre-learned examples D_l^(1/beta): median of "
             f"medians | models whose pre-learned data exceeds {smallest:.0f} examples (90% lower bound) |",
             "|---|---|---|---|---|"]
    targets = post["pair_target"].values
    pre = np.exp(np.log(post["D_l"]) / post["beta"])
    for target in sorted(set(targets)):
        pairs = post["pair"].values[targets == target]
        beta = post["beta"].sel(pair=pairs).median(("chain", "draw")).values
        pre_t = pre.sel(pair=pairs)
        above = int((pre_t.quantile((1 - PROB) / 2, dim=("chain", "draw")).values > smallest).sum())
        lines.append(f"| {target} | {len(pairs)} | {np.median(beta):.3g} [{beta.min():.3g}, {beta.max():.3g}] | "
                     f"{float(np.median(pre_t.median(('chain', 'draw')).values)):.3g} | {above} of {len(pairs)} |")
    return lines


def compute_optimal_exponent(post):
    """a in N* ~ C^a for the Chinchilla form: alpha_D / (alpha_N + alpha_D)."""
    return post["alpha_D"] / (post["alpha_N"] + post["alpha_D"])


DATASETS = [
    Dataset("epoch", "Chinchilla runs (Hoffmann et al. 2022) as extracted by Epoch AI",
            "epoch-research/analyzing-chinchilla, data/svg_extracted_data.csv (Besiroglu et al. 2024)",
            "chinchilla", epoch_table, "all 245 points; D = FLOP / (6 N) as in the extraction notebook",
            {"E": Published(1.8172, se=0.03), "A": Published(482.01, se=124.58), "B": Published(2085.43, se=1293.23),
             "alpha_N": Published(0.3478, se=0.02), "alpha_D": Published(0.3658, se=0.02)},
            "Besiroglu et al. 2024 (arXiv 2404.10102): Huber-loss fit to 240 of these points (5 outliers dropped), "
            "standard errors by bootstrap.",
            why="Same data, same form, a different estimator (a posterior under weak priors, all 245 points and "
                "a Student-t likelihood, against a Huber-loss point fit with bootstrap errors): the two should "
                "agree, and a disagreement here would point at the fitting code. B's standard error is large "
                "against B, so its ±1.645 SE range reaches below zero: a normal approximation is poor there."),
    Dataset("muennighoff", "Data-constrained runs on C4 (Muennighoff et al. 2023)",
            "huggingface/datablations, utils/parametric_fit.ipynb", "data_constrained", muennighoff_table,
            "292 of 296 runs: the two '*opt*' variants left out (other settings, one of them repeating a cell), "
            "and two runs that diverged (loss above a uniform guess over the vocabulary) marked failed; "
            "data_tokens = unique tokens, "
            "tokens_seen = tokens trained on",
            {k: Published(v) for k, v in MUENNIGHOFF_PUBLISHED.items()},
            "The authors' R_D* and R_N*; E, A, B, alpha = beta were fitted by them to Chinchilla's C4 isoFLOP "
            "data, not to these runs, and held fixed while R_D* and R_N* were fitted: the compute-optimal size "
            "U_N that R_N* counts from came from those fixed values. Here all seven are fitted jointly to these "
            "runs, and U_N follows from the fitted A, B and exponents. Point estimates only.",
            why="R_D* and R_N* are what the authors fitted to these runs, the nearest comparison there is. E, A, B "
                "and the exponents were fitted by them to other data (C4 isoFLOP runs, not these) and held fixed, "
                "so a difference there says the two datasets differ, not that either fit is wrong; R_N* counts "
                "excess parameters from a compute-optimal size that moves with them.",
            check=muennighoff_check),
    Dataset("porian", "IsoFLOP points, RefinedWeb, tuned hyperparameters (Porian et al. 2024)",
            "formll/resolving-scaling-law-discrepancies, data/summary_df.pickle.xz (as CSV)", "chinchilla",
            porian_table, "one configuration: " + ", ".join(f"{k}={v}" for k, v in PORIAN_SETTING.items())
            + " (the paper's final setting)",
            {"a": Published(0.497, 0.492, 0.504)},
            "Compute-optimal exponent a (N* ~ C^a) stored by the authors for this configuration; interval = "
            "5-95% of their bootstrap draws. Ours: a = alpha_D / (alpha_N + alpha_D) of the Chinchilla fit.",
            derived={"a": compute_optimal_exponent},
            why="The authors estimate a from the loss-minimising model size at each FLOP budget, fitted as a "
                "power law of compute; we from the parametric law: the comparison tests two routes to one exponent. The separate "
                "parameters are weakly identified by isoFLOP points alone (wide intervals for A and alpha_N), "
                "while their ratio a is much better determined."),
    Dataset("gadre", "Over-trained runs on three corpora (Gadre et al. 2024)", "mlfoundations/scaling, exp_data/models/*.json",
            "chinchilla", gadre_table, "all 104 runs; one target per training set (c4_original, rpj, rw_original), "
            "loss = C4 validation loss for all",
            published_note="The paper fits its own form L(C, M); no numeric values are printed in the repository, "
                           "so there is nothing to set beside ours.",
            derived={"a": compute_optimal_exponent},
            why="Three training sets are three targets, whose exponents the model pools hierarchically. With "
                "only three groups the spread of that pooling is barely identified and forms a funnel: sampled "
                "centred, the fit diverged 47 times (worst: the spread of alpha_D; target_accept 0.95 or a dense "
                "mass matrix did not help). Targets this few are now sampled non-centred, which removed every "
                "divergence; the posterior still needs deep trees (500-650 leapfrog steps per draw), and at 1000 "
                "draws its tail ESS fell below 400 in one of two fits, and at 2000 one draw of 8,000 diverged at target_accept "
                "0.9, and again at 0.95 once the chains started at the closed-form prior median (2026-12-07), so it is "
                "fitted with 2000 draws at 0.975.",
            fit_options=dict(draws=2000, target_accept=0.975)),
    Dataset("li", "Learning-rate sweep, best rate per cell (Li, Kudugunta & Zettlemoyer 2025)",
            "hadasah/scaling_laws, data/scaling_results_last_ckpt_only.csv", "chinchilla", li_table,
            "best peak learning rate per (model, D), models below 1B parameters (as the stored fit)",
            {"E": Published(1.808), "A": Published(51.36), "B": Published(4.68e5), "alpha_N": Published(0.200),
             "alpha_D": Published(0.636)},
            "The fit stored in the authors' repository (Chinchilla form, N with embeddings); a point estimate. "
            "Their paper's point is that such fits move with the fitting choices.", shipped=False,
            why="A point estimate from a different objective, so overlap is a weak test. With models below 1B "
                "parameters the irreducible loss E is poorly pinned down (wide interval) and trades off against "
                "A and alpha_N; B and alpha_D, which the data pin down, are where the two fits part."),
    Dataset("mikami", "Synthetic-to-real transfer, ResNet-50 on ImageNet (Mikami et al. 2022)",
            "pfnet-research/cg-transfer, results/ (final evaluation per run)", "transfer_gap", mikami_table,
            "ResNet-50, multiclass synthetic pre-training from the 64k pool: p in {0, 1k, ..., 64k} images x "
            "fine-tuning fraction in {1, ..., 100}% of ImageNet; loss = top-1 error rate (fraction), data in images",
            published_note="The paper's per-task exponents could not be read from its tables; nothing numeric to "
                           "set beside ours. Its law L = delta (gamma + p^-alpha) f^-beta is this package's "
                           "transfer-gap law with E = 0: our alpha_p, alpha_f correspond to its alpha, beta.",
            shipped=False,
            why="A plain least-squares fit of (A p^-a + G) f^-b + E to the 63 pre-trained cells, made when the data "
                "was gathered (not a published value), gave a = 0.21 and b = 0.30. The fine-tuning exponent "
                "alpha_f is well determined; the pre-training exponent alpha_p is not, because in this grid "
                "pre-training barely helps above about 10% of ImageNet, so most cells carry little information "
                "about p."),
]
KAPLAN_2020 = {"N_c": Published(6.4e13), "D_c": Published(1.8e13), "alpha_N": Published(0.076),
               "alpha_D": Published(0.103)}
KAPLAN_NOTE = ("Kaplan et al. 2020's own fit (WebText2, its BPE tokens), set beside ours as a sanity scale: other "
               "data and another tokenizer, so agreement is not expected.")
for key, title in (("epoch", "Chinchilla runs, Kaplan form"), ("porian", "Porian et al. isoFLOP points, Kaplan form")):
    base = next(d for d in DATASETS if d.key == key)
    DATASETS.append(Dataset(
        f"{key}_kaplan", title, base.source, "kaplan", base.table, base.selection, KAPLAN_2020, KAPLAN_NOTE,
        why="The same runs as the Chinchilla-form fit above, under the Kaplan form L = [(N_c/N)^(alpha_N/alpha_D) + "
            "D_c/D]^alpha_D, which has no irreducible term: its exponents absorb the floor, so they come out "
            "smaller than the Chinchilla form's."))
DATASETS.append(
    Dataset("lin", "Fine-tuning curves of 30 public LLMs (Lin et al. 2024)",
            "linhaowei1/Fine-tuning-Scaling-Law, benchmark/*.csv", "rectified", lin_table,
            "all 1,260 runs: 30 pre-trained models x 3 datasets (flan, gigaword, wmt19) x 14 fine-tuning sizes "
            "(200 to 1,638,400 examples); each (model, dataset) is its own curve; zero-shot losses not used",
            published_note="The paper publishes the law and its fits as figures; the repository stores no "
                           "per-model values, so there is nothing numeric to set beside ours.",
            summary=lin_summary,
            why="The paper's point is the pre-learned data D_l: a plain power law in D (D_l = 0) bends the wrong "
                "way at small D, where a pre-trained model starts on a plateau. The last column says for how many "
                "curves the data put the pre-learned amount above the smallest fine-tuning set with 90% "
                "posterior probability, which is where the rectified term is more than a prior."))
BY_KEY = {d.key: d for d in DATASETS}


# ---------------------------------------------------------------- fitting and comparing


def fit_dataset(d: Dataset, sampler: dict, seed: int = 0):
    from bayes_transfer import fit, load_grid

    grid = load_grid(d.table())
    # a dataset's options (a transfer-gap fit picks its model size itself: fit.gap_size); the smoke
    # test's tiny sampler overrides its draws
    options = {**d.fit_options, **sampler}
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*did not converge.*")
        result = fit(grid, law=d.law, seed=seed, progress=False, **options)
    return grid, result, time.perf_counter() - t0


def comparison(d: Dataset, result) -> pd.DataFrame:
    """Our median and 90% interval per parameter and group, beside the published value."""
    from bayes_transfer.laws import get

    post = result.posterior
    names = [p for p in get(d.law).params if p in post]
    draws = {n: post[n] for n in names}
    draws.update({n: f(post) for n, f in d.derived.items()})
    rows = []
    for name, da in draws.items():
        groups = [dim for dim in da.dims if dim not in ("chain", "draw")]
        labels = [()] if not groups else [(g,) for g in da[groups[0]].values]
        for label in labels:
            v = (da.sel({groups[0]: label[0]}) if label else da).values.ravel()
            lo, med, hi = np.quantile(v, [(1 - PROB) / 2, 0.5, (1 + PROB) / 2])
            pub = d.published.get(name)
            agrees = "-"
            if pub is not None:
                plo, phi = pub.interval()
                agrees = "yes" if (plo <= hi and phi >= lo) else "no"
            rows.append({"parameter": name, "group": label[0] if label else "-", "median": med, "lower": lo,
                         "upper": hi, "published": pub.text() if pub else "-", "overlap": agrees})
    return pd.DataFrame(rows)


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def section(d: Dataset, grid, result, seconds: float, sampler: dict) -> list[str]:
    diag = result.diagnostics()
    table = comparison(d, result) if d.summary is None else pd.DataFrame(columns=["overlap", "parameter"])
    lines = [f"## {d.title}", "",
             f"- Source: {d.source}; {'copied into data/external/' if d.shipped else 'not redistributable (no licence stated): read from BT_EXTERNAL_DATA'}.",
             f"- Rows: {d.selection}.",
             f"- Grid: {len(grid)} runs; loss {grid.loss_label}; data counted in {grid.data_label}.",
             f"- Law: `{d.law}`; NUTS {result.sampler['chains']} chains x {result.sampler['draws']} draws "
             f"(+{result.sampler['warmup']} warm-up, {result.sampler['mass_matrix']} mass matrix), "
             f"seed 0; fit time {seconds:.0f} s on this machine.",
             f"- Convergence: {diag}.", ""]
    if d.summary is not None:
        lines += d.summary(grid, result)
    else:
        lines += ["| parameter | group | our median | our 90% interval | published | overlap |", "|---|---|---|---|---|---|"]
    for r in table.itertuples():
        lines.append(f"| {r.parameter} | {r.group} | {_fmt(r.median)} | {_fmt(r.lower)} to {_fmt(r.upper)} | "
                     f"{r.published} | {r.overlap} |")
    agree = sorted(set(table.loc[table["overlap"] == "yes", "parameter"]))
    differ = sorted(set(table.loc[table["overlap"] == "no", "parameter"]))
    lines += ["", d.published_note or "No published values.", ""]
    if agree or differ:
        lines += [f"Overlapping the published value: {', '.join(agree) or 'none'}; not overlapping: "
                  f"{', '.join(differ) or 'none'}.", ""]
    if not diag.converged:
        lines += ["**Not converged at the default settings: these intervals are suspect.** The remedy belongs in "
                  "the model (its parameterisation or priors), not in the data.", ""]
    if d.check is not None:
        lines += d.check(grid) + [""]
    if d.why:
        lines += [d.why, ""]
    return lines


PREAMBLE = """# Other labs' data, fitted here

Generated by `python scripts/external_fits.py` (do not edit by hand). Each
dataset is loaded with `load_grid` and fitted with `fit` at the default
sampler settings (more draws where a section says so); the same tables can be fitted from the command line, e.g.
`bayes-transfer fit data/external/porian2024_resolving_discrepancies/grid.csv --law chinchilla`.
"Overlap" says whether our 90% credible interval meets the published value's
interval (its ±1.645 standard errors where the authors gave standard errors;
the point itself where they gave none). Published scratch-law values are in
nats per token of each lab's own tokenizer: comparable within a dataset, not
across datasets. Intervals are posterior quantiles over all draws. Fit times
are wall seconds on the 2-core machine at each dataset's last fit, under
whatever else it ran then: a rough guide, not a benchmark
(`benchmarks/fit_cost_breakdown.py` is that).
"""


def write_grids() -> None:
    """data/external/<dataset>/grid.csv: the fitted table in the contract, its units in '# key: value' lines."""
    folders = {"epoch": "epoch2024_chinchilla", "muennighoff": "muennighoff2023_data_constrained",
               "porian": "porian2024_resolving_discrepancies", "gadre": "gadre2024_overtraining"}
    for d in DATASETS:
        if d.key not in folders:  # not shipped, another form of a shipped table, or read from its own files
            continue
        table = d.table()
        folder = folders[d.key]
        header = "".join(f"# {k}: {v}\n" for k, v in table.attrs.items())
        (SHIPPED / folder / "grid.csv").write_text(header + table.to_csv(index=False))
        print(f"wrote {SHIPPED / folder / 'grid.csv'} ({len(table)} runs)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="tiny sampler settings (a smoke test)")
    parser.add_argument("--only", nargs="*", choices=list(BY_KEY),
                        help="fit only these datasets; the page keeps the others' sections from its last run")
    parser.add_argument("--write-grids", action="store_true", help="rewrite data/external/*/grid.csv and stop")
    parser.add_argument("--out", type=Path, default=PAGE, help="the page to write")
    args = parser.parse_args(argv)
    if args.write_grids:
        write_grids()
        return 0
    import numpyro

    numpyro.set_host_device_count(4)
    sampler = FAST_SAMPLER if args.fast else DEFAULT_SAMPLER
    lines = [PREAMBLE, "| dataset | law | runs | fit time (s) | max r_hat | min bulk ESS | divergences |",
             "|---|---|---|---|---|---|---|"]
    body = []
    earlier = _sections(args.out)
    for d in BY_KEY.values():
        row, section_lines = earlier.get(d.title, (None, None))
        if args.only and d.key not in args.only:
            if row is not None:  # not asked for: the page's earlier fit stays as it was
                lines.append(row)
                body += section_lines
            continue
        if not d.available:
            if row is not None:  # the page's earlier fit stays, saying it was not redone
                lines.append(row)
                note = [] if any(line.startswith("Kept from") for line in section_lines) else [
                    "Kept from an earlier run of this script: its data (not redistributable) was not given "
                    "(BT_EXTERNAL_DATA), so it was not refitted with this version's sampler.", ""]
                body += section_lines[:2] + note + section_lines[2:]
            else:
                lines.append(f"| {d.title} | {d.law} | - | - | - | - | - |")
                body += [f"## {d.title}", "", "Not fitted: its data (not redistributable) was not given "
                         "(BT_EXTERNAL_DATA).", ""]
            print(f"{d.key}: skipped, {d.folder} not found (set BT_EXTERNAL_DATA to the folder holding it)",
                  file=sys.stderr)
            continue
        print(f"{d.key}: fitting {d.law} ...", file=sys.stderr, flush=True)
        grid, result, seconds = fit_dataset(d, sampler)
        diag = result.diagnostics()
        lines.append(f"| {d.title} | {d.law} | {len(grid)} | {seconds:.0f} | {diag.max_r_hat:.3f} | "
                     f"{diag.min_ess_bulk:.0f} | {diag.divergences} |")
        body += section(d, grid, result, seconds, sampler)
        print(f"{d.key}: {seconds:.0f} s, {diag}", file=sys.stderr, flush=True)
        _write(args.out, lines, body)  # after each dataset: a long run leaves what it has finished
    _write(args.out, lines, body)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


def _sections(path: Path) -> dict[str, tuple[str | None, list[str]]]:
    """An existing page's datasets: title -> (summary row, section lines), for those it fitted."""
    if not path.exists():
        return {}
    text = path.read_text().splitlines()
    found, title = {}, None
    for line in text:
        if line.startswith("## "):
            title = line[3:]
            found[title] = [line]
        elif title is not None:
            found[title].append(line)
    rows = {line.split(" | ")[0][2:]: line for line in text if line.startswith("| ")}
    return {t: (rows.get(t), lines) for t, lines in found.items()
            if not any(line.startswith("Not fitted") for line in lines)}


def _write(path: Path, lines: list[str], body: list[str]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text("\n".join(lines + [""] + body))
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
