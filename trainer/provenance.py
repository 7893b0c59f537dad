"""What a run record says about where it came from: the code and the corpus build."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path


def code_version() -> str:
    """The commit of the code this process runs, read when it was imported
    (a checkout that moves on while a grid runs does not relabel its runs)."""
    return _CODE_VERSION


def _read_code_version() -> str:
    """$TRANSFER_CODE_VERSION where the tree travels without .git (a copied
    working tree on a GPU machine), else git's HEAD."""
    if os.environ.get("TRANSFER_CODE_VERSION"):
        return os.environ["TRANSFER_CODE_VERSION"]
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


_CODE_VERSION = _read_code_version()


def corpus_hashes(manifest: dict) -> dict:
    """sha256 of each split of each distribution of a corpus manifest."""
    dists = manifest["distributions"]
    return {n: {s: d.get("splits", {}).get(s, {}).get("sha256") for s in ("train", "val")}
            for n, d in sorted(dists.items())}
