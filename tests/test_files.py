"""Atomic writes: a failure at any moment leaves the old file or none, never
a half-written one, and no temporary file behind."""
import errno
import json

import pytest

from trainer.files import atomic_write, atomic_write_json, sweep_temps


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "r.json"
    atomic_write_json(path, {"a": 1})

    def disk_full(tmp):
        tmp.write_text('{"a": ')  # half of the new content, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp))

    with pytest.raises(OSError, match="No space left"):
        atomic_write(path, disk_full)
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_temporaries_of_killed_writers_are_swept(tmp_path):
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / ".x.json.99.tmp").write_text("{")
    (tmp_path / "runs" / "x.json").write_text("{}")
    assert sweep_temps(tmp_path) == 1
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["x.json"]
