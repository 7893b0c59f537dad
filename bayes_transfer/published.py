"""The published values the fits are compared against (REFERENCE.md), in one place.

Units differ from this package's bytes and nats per byte: Kaplan's and
Chinchilla's fits are for BPE tokens of web text, so they are a sanity scale,
not a target. Hernandez et al.'s transfer fits are in characters of Python,
comparable to bytes.
"""

from __future__ import annotations

import pandas as pd

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
    elif law == "transfer":
        if pair is None:
            raise ValueError("published transfer values depend on the source: give pair='source->target'")
        key = transfer_source(pair.split("->", 1)[0])
        if key is not None:
            entry = TRANSFER[key]
            rows += [(name, value, entry["reference"]) for name, value in entry["values"].items()]
    elif law != "transfer_gap":  # Barnett's law has no published numbers we could check
        raise ValueError(f"unknown law {law!r}")
    return pd.DataFrame(rows, columns=["parameter", "value", "reference"])
