"""Writing files so that a kill or a full disk never leaves a half-written
one: write to a temporary name beside the target, fsync, rename. A failed
write removes its temporary file; `sweep_temps` removes those a killed
process left behind."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

_TMP_SUFFIX = ".tmp"  # never the target's own suffix, so a glob for "*.json" never sees a half-written file


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call write(tmp) on a temporary path beside `path`, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}{_TMP_SUFFIX}")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    atomic_write(path, lambda t: t.write_bytes(data))


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda t: t.write_text(text))


def atomic_write_json(path: str | Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=True) + "\n")


def atomic_torch_save(obj, path: str | Path) -> None:
    import torch

    atomic_write(path, lambda t: torch.save(obj, t))


def sweep_temps(root: str | Path) -> int:
    """Remove temporary files left under root by killed writers; return how many."""
    n = 0
    for p in Path(root).rglob(f".*{_TMP_SUFFIX}"):
        if p.is_file():
            p.unlink(missing_ok=True)
            n += 1
    return n
