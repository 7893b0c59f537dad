"""Every bad input to the `transfer-train` command is refused in one clear
line, and nothing is damaged.

Each case runs the command in a fresh workspace (a finished micro-sized
grid, its spec, a corpus sample) and is counted as:

- refused clearly: a non-zero exit, one `error:` line naming the problem
  (the case's expected words), no traceback;
- corrupt: the workspace changed (a file written, damaged or left behind),
  or the input was accepted (exit 0).

The figure is printed (`pytest -s`) and must read: all refused clearly, 0 corrupt.
"""
from __future__ import annotations

import errno
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch
from typer.testing import CliRunner

from _trainer_corpus import corpus_root
from _workspace import invoke_in_copy
from trainer.cli import app

torch.set_num_threads(1)
runner = CliRunner()

GOOD = """name = "small"
[grid]
sizes = ["25k"]
targets = ["python"]
sources = ["none"]
data_tokens = [4096]
seeds = [0]
[train]
batch = 2
eval_interval = 3
eval_seqs = 4
report_seqs = 4
patience = 1
budget = 1.5
"""


@dataclass
class Case:
    name: str
    args: Callable[[Path], list]
    expect: str
    setup: Callable[[Path], None] | None = None
    patch: Callable[[pytest.MonkeyPatch], None] | None = None


def spec_with(name: str, old: str, new: str) -> Callable[[Path], None]:
    def setup(ws: Path) -> None:
        text = GOOD.replace(old, new, 1) if old else new
        assert old == "" or text != GOOD, f"case {name}: {old!r} not in the spec"
        (ws / f"{name}.toml").write_text(text)
    return setup


def dry(name: str) -> Callable[[Path], list]:
    return lambda ws: ["grid", "run", str(ws / f"{name}.toml"), "--out", str(ws / "new"), "--dry-run",
                       "--corpora", str(ws / "corpora")]


def bad_spec(name: str, old: str, new: str, expect: str) -> Case:
    return Case(f"spec {name}", dry(name), expect, spec_with(name, old, new))


SPECS = [
    bad_spec("neg_lr", "patience = 1", 'patience = 1\nlr = { "25k" = -0.01 }', "[train].lr.25k: -0.01 is out of range"),
    bad_spec("zero_interval", "eval_interval = 3", "eval_interval = 0", "[train].eval_interval: 0 is out of range"),
    bad_spec("zero_batch", "batch = 2", "batch = 0", "[train].batch: 0 is out of range"),
    bad_spec("neg_batch", "batch = 2", "batch = -4", "[train].batch: -4 is out of range"),
    bad_spec("frac_batch", "batch = 2", "batch = 4.5", "[train].batch: 4.5 is not a whole number"),
    bad_spec("bool_warmup", "patience = 1", "patience = 1\nwarmup = true", "[train].warmup: True is not a number"),
    bad_spec("str_interval", "eval_interval = 3", 'eval_interval = "4"', "[train].eval_interval: '4' is not a number"),
    bad_spec("huge_eval", "eval_seqs = 4", "eval_seqs = 100000000", "[train].eval_seqs: 100000000 is out of range"),
    bad_spec("pre_eval", "", GOOD + '[pretrain]\neval_seqs = 100000000\n', "[pretrain].eval_seqs: 100000000 is out"),
    bad_spec("typo", "patience = 1", "patienc = 1", "unknown key `patienc` (did you mean `patience`?)"),
    bad_spec("top_typo", 'name = "small"', 'nme = "small"', "unknown key `nme`"),
    bad_spec("traversal", 'name = "small"', 'name = "../../x"', "spec name '../../x' must be"),
    bad_spec("slash", 'name = "small"', 'name = "a/b"', "spec name 'a/b' must be"),
    bad_spec("size", 'sizes = ["25k"]', 'sizes = ["1b"]', "unknown model size '1b'"),
    bad_spec("target", 'targets = ["python"]', 'targets = ["klingon"]', "unknown corpus 'klingon'"),
    bad_spec("source", 'sources = ["none"]', 'sources = ["none", "poetry"]', "unknown source 'poetry'"),
    bad_spec("d_zero", "data_tokens = [4096]", "data_tokens = [0]", "data_tokens: 0 is out of range"),
    bad_spec("d_dup", "data_tokens = [4096]", "data_tokens = [4096, 4096]", "duplicate cells"),
    bad_spec("d_big", "data_tokens = [4096]", "data_tokens = [99999999]", "D_F=99999999 exceeds the"),
    bad_spec("seed_frac", "seeds = [0]", "seeds = [1.5]", "not a whole number"),
    bad_spec("no_pretrain", 'sources = ["none"]', 'sources = ["text"]', "missing `pretrain_tokens`"),
    bad_spec("no_positive_p", 'sources = ["none"]', 'sources = ["text"]\npretrain_tokens = [0]', "no positive value"),
    bad_spec("budget", "budget = 1.5", "max_steps = 10", "max_steps 10 gives"),
    bad_spec("empty_sizes", 'sizes = ["25k"]', "sizes = []", "[grid].sizes must be a non-empty list"),
    bad_spec("toml", "", "[grid\nsizes = 1", "is not valid TOML"),
    bad_spec("no_grid", "", 'name = "x"\n', "missing [grid] table"),
    bad_spec("patience0", "patience = 1", "patience = 0", "[train].patience: 0 is out of range"),
    bad_spec("smooth0", "patience = 1", "patience = 1\nsmooth = 0", "[train].smooth: 0 is out of range"),
    bad_spec("smooth2", "patience = 1", "patience = 1\nsmooth = 2.0", "[train].smooth: 2 is out of range"),
    bad_spec("report0", "report_seqs = 4", "report_seqs = 0", "[train].report_seqs: 0 is out of range"),
    bad_spec("budget_huge", "budget = 1.5", "budget = 1e9", "[train].budget: 1e+09 is out of range"),
    bad_spec("max_steps0", "budget = 1.5", "max_steps = 0", "[train].max_steps: 0 is out of range"),
    bad_spec("pack0", "patience = 1", "patience = 1\npack = 0", "[train].pack: 0 is out of range"),
    bad_spec("warmup_neg", "patience = 1", "patience = 1\nwarmup = -1", "[train].warmup: -1 is out of range"),
    bad_spec("lr_scalar", "patience = 1", "patience = 1\nlr = 0.001", "[train].lr must be a table"),
    bad_spec("pre_tokens0", "", GOOD + "[pretrain]\ntokens = 0\n", "[pretrain].tokens: 0 is out of range"),
    bad_spec("pre_interval0", "", GOOD + "[pretrain]\neval_interval = 0\n", "[pretrain].eval_interval: 0 is out"),
    bad_spec("pre_seed_neg", "", GOOD + "[pretrain]\nseed = -1\n", "[pretrain].seed: -1 is out of range"),
    bad_spec("seed_neg", "seeds = [0]", "seeds = [-1]", "[grid].seeds: -1 is out of range"),
    bad_spec("multi0", "seeds = [0]", "seeds = [0]\nmulti_seed_max_data_tokens = 0", "multi_seed_max_data_tokens: 0 is out"),
    bad_spec("p_neg", 'sources = ["none"]', 'sources = ["none", "text"]\npretrain_tokens = [-5]', "pretrain_tokens: -5 is out"),
    bad_spec("dmax0", "seeds = [0]", 'seeds = [0]\ndata_tokens_max_by_size = { "25k" = 0 }', "data_tokens_max_by_size.25k: 0"),
    bad_spec("scratch_tiny", "seeds = [0]", "seeds = [0]\nscratch_data_tokens = [10]", "scratch_data_tokens: 10 is out"),
    bad_spec("grid_typo", 'sizes = ["25k"]', 'size = ["25k"]', "unknown key `size` (did you mean `sizes`?)"),
    bad_spec("seed_sizes", "", GOOD + '[pretrain]\nseed_sizes = ["100k"]\n', "seed_sizes: size '100k' is not in"),
    Case("spec missing", lambda ws: ["grid", "run", str(ws / "nope.toml"), "--out", str(ws / "new"), "--dry-run"],
         "does not exist"),
    Case("spec is a directory", lambda ws: ["grid", "run", str(ws / "corpora"), "--out", str(ws / "new"),
                                            "--dry-run"], "is not a file"),
    Case("spec binary", dry("bin"), "cannot be read", lambda ws: (ws / "bin.toml").write_bytes(b"\xff\xfe\x00")),
]

RUNS = [
    Case("out is a file", lambda ws: ["grid", "run", str(ws / "small.toml"), "--out", str(ws / "small.toml"),
                                      "--corpora", str(ws / "corpora")], "is not a directory"),
    Case("corpora missing", lambda ws: ["grid", "run", str(ws / "small.toml"), "--out", str(ws / "new"),
                                        "--corpora", str(ws / "nowhere")], "does not exist"),
    Case("grid in use", lambda ws: ["grid", "run", str(ws / "small.toml"), "--out", str(ws / "grid"),
                                    "--corpora", str(ws / "corpora")], "is in use by", patch=lambda mp: _hold_lock(mp)),
    Case("workers zero", lambda ws: ["grid", "run", str(ws / "small.toml"), "--out", str(ws / "new"),
                                     "--workers", "0"], "--workers"),
    Case("device", lambda ws: ["grid", "run", str(ws / "small.toml"), "--out", str(ws / "new"), "--device", "tpu9",
                               "--dry-run"], "--device 'tpu9'"),
    Case("status not a dir", lambda ws: ["grid", "status", str(ws / "small.toml")], "is not a directory"),
    Case("status empty", lambda ws: ["grid", "status", str(ws / "corpora" / "python")], "holds no grid"),
    Case("status damaged spec", lambda ws: ["grid", "status", str(ws / "grid")], "is damaged",
         lambda ws: (ws / "grid" / "specs" / "small.json").write_text("{")),
    Case("export to a dir", lambda ws: ["grid", "export", str(ws / "grid"), "--out", str(ws / "corpora")],
         "is a directory"),
    Case("export no grid", lambda ws: ["grid", "export", str(ws / "corpora"), "--out", str(ws / "x.nc")],
         "holds no grid"),
    Case("export unknown spec", lambda ws: ["grid", "export", str(ws / "grid"), "--out", str(ws / "x.nc"),
                                            "--spec", "other"], "holds no grid named 'other'"),
    Case("export disk full", lambda ws: ["grid", "export", str(ws / "grid"), "--out", str(ws / "x.nc")],
         "No space left on device", patch=lambda mp: _disk_full(mp)),
    Case("run size", lambda ws: ["run", "--size", "9z", "--target", "python", "--data-tokens", "4096",
                                 "--out", str(ws / "one.json"), "--corpora", str(ws / "corpora")],
         "unknown model size '9z'"),
    Case("run tiny data", lambda ws: ["run", "--size", "25k", "--target", "python", "--data-tokens", "10",
                                      "--out", str(ws / "one.json"), "--corpora", str(ws / "corpora")],
         "at least one sequence"),
    Case("run out is a dir", lambda ws: ["run", "--size", "25k", "--target", "python", "--data-tokens", "4096",
                                         "--out", str(ws / "grid"), "--corpora", str(ws / "corpora")],
         "is a directory"),
    Case("run truncated init", lambda ws: ["run", "--size", "25k", "--target", "python", "--data-tokens", "4096",
                                           "--out", str(ws / "one.json"), "--corpora", str(ws / "corpora"),
                                           "--init", str(ws / "half.pt")], "cannot be read",
         lambda ws: (ws / "half.pt").write_bytes(b"PK\x03\x04" + b"\x00" * 50)),
    Case("run crafted init", lambda ws: ["run", "--size", "25k", "--target", "python", "--data-tokens", "4096",
                                         "--out", str(ws / "one.json"), "--corpora", str(ws / "corpora"),
                                         "--init", str(ws / "evil.pt")], "cannot be read", lambda ws: _evil(ws)),
    Case("price bad spec", lambda ws: ["grid", "price", str(ws / "nope.toml"), "--out", str(ws / "c.csv")],
         "does not exist"),
]

CASES = SPECS + RUNS


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/transfer-train-evil-ran",))


def _evil(ws: Path) -> None:
    torch.save({"config": {}, "state": _Evil()}, ws / "evil.pt")


def _hold_lock(mp: pytest.MonkeyPatch) -> None:
    import trainer.scheduler as sch

    def locked(self):
        raise sch.GridLocked(f"{self.path.parent} is in use by `grid run` pid 1; wait for it or use another --out")

    mp.setattr(sch.DirLock, "__enter__", locked)


def _disk_full(mp: pytest.MonkeyPatch) -> None:
    import trainer.files as files

    def full(path, write):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    mp.setattr(files, "atomic_write", full)
    import trainer.export as export

    mp.setattr(export, "atomic_write", full)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    from trainer.scheduler import run_grid
    from trainer.spec import parse_spec
    import tomllib

    ws = tmp_path_factory.mktemp("pristine")
    shutil.copytree(corpus_root(ws), ws / "corpora")
    (ws / "small.toml").write_text(GOOD)
    run_grid(parse_spec(tomllib.loads(GOOD), GOOD), ws / "grid", ws / "corpora")
    return ws


def run_case(case: Case, pristine: Path, tmp_path: Path, monkeypatch) -> tuple[str, bool, str]:
    res, changed = invoke_in_copy(runner, app, case, pristine, tmp_path, monkeypatch)
    out = res.output
    lines = [ln for ln in out.strip().splitlines() if ln.strip()]
    err = [ln for ln in lines if "error" in ln.lower()]
    unexpected = res.exception is not None and not isinstance(res.exception, SystemExit)
    clear = (res.exit_code != 0 and not unexpected and len(err) >= 1 and "Traceback" not in out
             and case.expect.lower() in " ".join(lines).lower())
    corrupt = res.exit_code == 0 or changed or Path("/tmp/transfer-train-evil-ran").exists()
    return case.name, clear and not corrupt, ("corrupt" if corrupt else "") + f" exit {res.exit_code}: {out[-300:]}"


def test_every_bad_trainer_input_is_refused_clearly_and_nothing_is_damaged(pristine, tmp_path, monkeypatch, capsys):
    results = [run_case(c, pristine, tmp_path, monkeypatch) for c in CASES]
    clear = [r for r in results if r[1]]
    corrupt = [r for r in results if r[2].startswith("corrupt")]
    with capsys.disabled():
        print(f"\ntransfer-train bad inputs: {len(CASES)} tried, {len(clear)} refused clearly, {len(corrupt)} corrupt")
    bad = [f"{n}: {why}" for n, ok, why in results if not ok]
    assert not bad, "\n".join(bad)
