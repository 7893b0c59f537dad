"""What a run record says about where it came from: the code and the corpus build."""
from __future__ import annotations

import ast
import os
import subprocess
from pathlib import Path

# The modules a group's numbers depend on, besides its settings (which a saved state checks itself).
TRAINING_MODULES = ("train.py", "model.py", "data.py", "optim.py")
_HERE = Path(__file__).parent


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
# The training code this process runs, read with the commit (a checkout that moves on does not change it).
_RUNNING = {name: (_HERE / name).read_text() for name in TRAINING_MODULES}


def trains_like(commit: str) -> bool:
    """Whether ``commit`` trains as this process does: the same commit, or the
    same program in every one of TRAINING_MODULES (syntax trees compared,
    so comments and docstrings aside). No where git cannot show ``commit``."""
    if commit == code_version():
        return True
    try:
        return all(program(source_at(commit, name)) == program(_RUNNING[name]) for name in TRAINING_MODULES)
    except (OSError, subprocess.CalledProcessError, SyntaxError, ValueError):
        return False


def source_at(commit: str, name: str) -> str:
    """The text of trainer/``name`` at ``commit``."""
    return subprocess.run(["git", "show", f"{commit}:trainer/{name}"], cwd=_HERE, capture_output=True, text=True,
                          check=True).stdout


def program(source: str) -> str:
    """Python source as its syntax tree without docstrings: equal for code that runs alike."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree)


def corpus_hashes(manifest: dict) -> dict:
    """sha256 of each split of each distribution of a corpus manifest."""
    dists = manifest["distributions"]
    return {n: {s: d.get("splits", {}).get(s, {}).get("sha256") for s in ("train", "val")}
            for n, d in sorted(dists.items())}
