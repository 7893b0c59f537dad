"""Writing a file so that it is either complete or absent: a temporary file, then a rename."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable


def atomic_write(path, data: bytes | Callable[[Path], object]) -> Path:
    """Write ``data`` (bytes, or a function that writes a given path) to ``path`` atomically."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        if callable(data):
            data(tmp)
        else:
            tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
