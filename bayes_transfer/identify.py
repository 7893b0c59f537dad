"""Refusing a grid that cannot identify a law's parameters, naming the parameter."""

from __future__ import annotations

import warnings

import numpy as np

from bayes_transfer import laws
from bayes_transfer.models import ModelData
from loss_grid import SCRATCH, pair_label


class NotIdentifiedError(ValueError):
    """The grid cannot identify a parameter of the law (and no prior was given for it)."""


def check_identifiable(data: ModelData, overrides: dict) -> None:
    """Refuse a grid that cannot identify a parameter, naming it.

    A parameter whose prior was given explicitly gets a warning instead: the
    caller has said what they believe, and the answer for it is that prior.
    """
    runs = data.runs
    spec = laws.get(data.law)
    problems = []

    def need(param, group, values, what):
        distinct = np.unique(values)
        if len(distinct) < 2:
            problems.append((param, f"{param} cannot be identified for {group}: {what} {distinct.tolist()}"))

    scratch = runs[runs["source"] == SCRATCH]
    if spec.kind in ("scratch", "transfer"):
        additive = "E" in laws.scratch(data.scratch_law).params  # an irreducible term to separate
        for t, g in scratch.groupby("target"):
            need("alpha_N", f"target {t!r}", g["n_params"], "its scratch runs have the single model size")
            need("alpha_D", f"target {t!r}", g["data_tokens"], "its scratch runs have the single data size")
            if additive and (g["n_params"].nunique() < 2 or g["data_tokens"].nunique() < 2):
                problems.append(("E", f"E cannot be separated from A and B for target {t!r} without several sizes and data amounts"))
    tuned = runs[runs["source"] != SCRATCH]
    for (s, t), g in tuned.groupby(["source", "target"]):
        name = pair_label(s, t)
        if spec.kind == "transfer":
            need("beta", f"pair {name!r}", g["n_params"], "its fine-tuned runs have the single model size")
            need("alpha", f"pair {name!r}", g["data_tokens"], "its fine-tuned runs have the single D_F")
            if g["pretrain_tokens"].nunique() > 1:
                warnings.warn(
                    f"pair {name!r} mixes pre-training amounts {sorted(g['pretrain_tokens'].unique())}: the transfer law "
                    "has no term for them (fit 'transfer_gap' at one size, or select one amount)",
                    stacklevel=3,
                )
        elif spec.kind == "gap":
            need("alpha_p", f"pair {name!r}", g["pretrain_tokens"], "its runs have the single pre-training amount")
        elif spec.kind == "finetune" and g["data_tokens"].nunique() < 3:
            # a curve with a floor and a knee (L0, w, beta, r) needs at least three amounts
            problems.append(("beta", f"the fine-tuning curve of pair {name!r} cannot be identified from "
                                     f"{g['data_tokens'].nunique()} D_F value(s); it needs three or more"))
    if spec.kind == "gap":
        for t in data.targets:
            g = runs[runs["target"] == t]
            need("alpha_f", f"target {t!r}", g["data_tokens"], "its runs have the single fine-tuning amount")
            if scratch[scratch["target"] == t].empty:
                problems.append(("C_0_term", f"C_0 cannot be identified for target {t!r}: no from-scratch runs"))
    errors = [msg for param, msg in problems if param not in overrides]
    for param, msg in problems:
        if param in overrides:
            warnings.warn(f"{msg}; its posterior is the prior you gave", stacklevel=3)
    if errors:
        sites = sorted({param for param, _ in problems if param not in overrides})
        raise NotIdentifiedError("; ".join(errors) + " (to fit it from a prior you give, pass priors={"
                                 + ", ".join(f"'{x}': ..." for x in sites) + "})")
