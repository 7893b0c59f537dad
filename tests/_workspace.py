"""Running a command on a copy of a pristine workspace, for the bad-input
suites: what it printed, and whether it changed anything."""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path


def files_of(ws: Path) -> dict[str, str]:
    """Every file (by hash) and folder under ws."""
    return {str(p.relative_to(ws)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(ws.rglob("*"))}


def invoke_in_copy(runner, app, case, pristine: Path, tmp_path: Path, monkeypatch):
    """Copy pristine, apply the case's setup and patch, run its command line;
    return (the CliRunner result, whether the workspace changed)."""
    ws = tmp_path / case.name.replace(" ", "_")
    shutil.copytree(pristine, ws)
    if case.setup:
        case.setup(ws)
    before = files_of(ws)
    with monkeypatch.context() as mp:
        if case.patch:
            case.patch(mp)
        result = runner.invoke(app, [str(a) for a in case.args(ws)])
    return result, files_of(ws) != before
