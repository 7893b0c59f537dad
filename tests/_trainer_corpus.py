"""A tiny corpus root in the corpora format, for trainer tests: the real
sample when it is in the repo, else synthetic documents of six styles."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

SAMPLE = Path(__file__).parent / "data" / "corpus_sample"
NAMES = ("english", "python", "c", "go", "german", "maths")
_WORDS = {
    "english": "the of and to a in is that for it as with was on be by this are not or have".split(),
    "python": "def return if else for in import self None True False class lambda yield with as".split(),
    "c": "int char void return if else for while struct static const unsigned sizeof".split(),
    "go": "func return if else for range package import var type struct interface go".split(),
    "german": "der die das und ist nicht mit von zu den ein eine auf sich dem fur".split(),
    "maths": "|- ( ph -> ps ) wff class setvar e. = A B C x y".split(),
}


def corpus_root(tmp: Path, train_bytes: int = 120_000, val_bytes: int = 20_000) -> Path:
    if all((SAMPLE / n / "train.bin").exists() for n in NAMES):
        return SAMPLE
    root = tmp / "corpus"
    dists = {}
    for i, name in enumerate(NAMES):
        rng = np.random.default_rng(i)
        words = _WORDS[name]
        (root / name).mkdir(parents=True)
        splits = {}
        for split, size in (("train", train_bytes), ("val", val_bytes)):
            out = bytearray()
            while len(out) < size:
                doc = " ".join(words[j] for j in rng.integers(0, len(words), rng.integers(20, 200)))
                out += doc.encode() + b"\x00"
            (root / name / f"{split}.bin").write_bytes(bytes(out))
            splits[split] = {"bytes": len(out), "sha256": hashlib.sha256(bytes(out)).hexdigest()}
        dists[name] = {"splits": splits}
    (root / "manifest.json").write_text(json.dumps({"distributions": dists}))
    return root
