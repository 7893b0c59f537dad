"""The published values the fits are compared against (docs/published.md), in one place.

Units differ from this package's bytes and nats per byte: Kaplan's and
Chinchilla's fits are for BPE tokens of web text, so they are a sanity scale,
not a target. Hernandez et al.'s transfer fits are in characters of Python,
comparable to bytes. These values sit beside results only: no prior uses them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from bayes_transfer import laws
from loss_grid import split_pair

SCRATCH = {
    "kaplan": {
        "reference": "Kaplan et al. 2020 (WebText2, BPE tokens)",
        "values": {"N_c": 6.4e13, "D_c": 1.8e13, "alpha_N": 0.076, "alpha_D": 0.103},
    },
    "chinchilla": {
        "reference": "Hoffmann et al. 2022 (MassiveText, nats per BPE token)",
        "values": {"E": 1.69, "A": 406.4, "B": 410.7, "alpha_N": 0.34, "alpha_D": 0.28},
    },
}

# Hernandez et al. 2021, Eq. 1.1 fits, Python as the target (characters).
TRANSFER = {
    "text": {"reference": "Hernandez et al. 2021: English text -> Python",
             "values": {"k": 1.9e4, "alpha": 0.18, "beta": 0.38}},
    "text+code": {"reference": "Hernandez et al. 2021: 50% text + 50% non-Python code -> Python",
                  "values": {"k": 2.1e5, "alpha": 0.096, "beta": 0.38}},
}

_TEXT_NAMES = {"text", "english", "en", "prose", "docs"}


def transfer_source(source: str) -> str | None:
    """Which published transfer fit a source name corresponds to (None: no published fit)."""
    name = source.lower().replace(" ", "")
    if "code" in name:
        return "text+code"
    if name in _TEXT_NAMES:
        return "text"
    return None


def published_values(law: str, pair: str | None = None) -> pd.DataFrame:
    """Rows (parameter, value, reference) of the published fit matching `law` (and a pair's source)."""
    rows = []
    if law in SCRATCH:
        entry = SCRATCH[law]
        rows += [(name, value, entry["reference"]) for name, value in entry["values"].items()]
    elif laws.get(law).kind == "transfer":
        if pair is None:
            raise ValueError("published transfer values depend on the source: give pair='source->target'")
        key = transfer_source(split_pair(pair)[0])
        if key is not None:
            entry = TRANSFER[key]
            rows += [(name, value, entry["reference"]) for name, value in entry["values"].items()]
    # other laws (Barnett's transfer gap) have no published numbers we could check
    return pd.DataFrame(rows, columns=["parameter", "value", "reference"])


def compare(fit, prob: float = 0.9) -> pd.DataFrame:
    """Each law parameter's posterior median and interval per group, how far the data
    narrowed it (``width_ratio``, ``prior_driven``: see ``Fit.summary``), and the
    published value beside it."""
    from bayes_transfer import quantities as q

    spec = laws.get(fit.law)
    scratch = list(laws.scratch(q.scratch_form(fit)).params) if spec.kind in ("scratch", "transfer") else []
    own = [] if spec.kind == "scratch" else list(spec.params)
    summary = fit.summary(var_names=[n for n in scratch + own if n in fit.posterior], prob=prob)
    lo, hi = f"{(1 - prob) / 2:.0%}", f"{(1 + prob) / 2:.0%}"
    rows = []
    for label, row in summary.iterrows():
        name, _, group = label.partition("[")
        group = group.rstrip("]") or None
        if name in scratch:
            table = published_values(q.scratch_form(fit))
        elif spec.kind == "transfer" and group is not None:
            table = published_values("transfer", group)
        else:
            table = published_values(fit.law) if spec.kind != "transfer" else published_values("kaplan").iloc[:0]
        hit = table[table["parameter"] == name]
        rows.append({"parameter": name, "group": group or "all", "median": row["median"], "lower": row[lo],
                     "upper": row[hi], "width_ratio": row["width ratio"], "prior_driven": bool(row["prior-driven"]),
                     "published": float(hit["value"].iloc[0]) if len(hit) else np.nan,
                     "reference": str(hit["reference"].iloc[0]) if len(hit) else ""})
    return pd.DataFrame(rows)
