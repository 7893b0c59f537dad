"""Grid specs: the schema refuses bad input with one line naming the key;
good specs expand into the cells they describe."""
from pathlib import Path

import pytest

from trainer.spec import SpecError, load_spec, parse_spec

MICRO = Path(__file__).parents[1] / "trainer" / "specs" / "micro.toml"


def spec_dict(**grid):
    g = dict(sizes=["25k"], targets=["python"], sources=["none"], data_tokens=[4096], seeds=[0])
    g.update(grid)
    return {"grid": g, "train": {"batch": 2, "eval_interval": 3, "eval_seqs": 4, "patience": 1}}


@pytest.mark.parametrize("grid,msg", [
    (dict(sizes=["1b"]), "unknown model size '1b'"),
    (dict(targets=["klingon"]), "unknown corpus 'klingon'"),
    (dict(sources=["none", "poetry"]), "unknown source 'poetry'"),
    (dict(data_tokens=[0]), r"data_tokens: 0 is out of range \[257, "),
    (dict(data_tokens=[-5]), r"data_tokens: -5 is out of range \[257, "),
    (dict(data_tokens=[4096, 4096]), "duplicate cells"),
    (dict(seeds=[1.5]), "not a whole number"),
    (dict(seeds=[True]), "not a number"),
    (dict(data_tokens="4096"), "must be a non-empty list"),
    (dict(sources=["text"]), "missing `pretrain_tokens`"),
    (dict(sources=["text"], pretrain_tokens=[0]), "no positive value"),
])
def test_bad_specs_are_refused_with_a_clear_error(grid, msg):
    with pytest.raises(SpecError, match=msg):
        parse_spec(spec_dict(**grid))


def test_unknown_keys_and_budget_are_checked():
    d = spec_dict()
    d["train"]["patienc"] = 3
    with pytest.raises(SpecError, match="unknown key `patienc` \\(did you mean `patience`\\?\\)"):
        parse_spec(d)
    d = spec_dict(sources=["text"], pretrain_tokens=[10**6])
    d["pretrain"] = {"tokens": 1000}
    with pytest.raises(SpecError, match="at least the largest pretrain_tokens"):
        parse_spec(d)


def test_micro_spec_expands():
    sp = load_spec(MICRO)
    assert len(sp.pretrain_jobs) == 1 and sp.pretrain_jobs[0].checkpoints == (32768, 65536)
    # every cell's token budget covers 1.5x its expected tokens to early stopping
    from trainer.plan import check_budgets

    check_budgets(sp)
    # 2 targets x (D_F 4096: 2 seeds, 16384: 1 seed) x (scratch + text)
    assert len(sp.cells) == 2 * 3 * 2
    assert len({c.run_id for c in sp.cells}) == len(sp.cells)
    assert {c.source for c in sp.cells} == {"none", "text"}


@pytest.mark.parametrize("section,key,value,msg", [
    ("train", "lr", {"25k": -0.01}, r"\[train\].lr.25k: -0.01 is out of range"),
    ("train", "lr", {"9z": 1e-3}, "unknown model size '9z'"),
    ("train", "eval_interval", 0, r"\[train\].eval_interval: 0 is out of range"),
    ("train", "eval_interval", "4", r"\[train\].eval_interval: '4' is not a number"),
    ("train", "batch", 0, r"\[train\].batch: 0 is out of range"),
    ("train", "batch", -4, r"\[train\].batch: -4 is out of range"),
    ("train", "batch", 4.5, r"\[train\].batch: 4.5 is not a whole number"),
    ("train", "warmup", True, r"\[train\].warmup: True is not a number"),
    ("train", "smooth", float("nan"), r"\[train\].smooth: nan is not a finite number"),
    ("train", "budget", 0.5, r"\[train\].budget: 0.5 is out of range"),
    ("train", "eval_seqs", 10**8, r"\[train\].eval_seqs: 100000000 is out of range"),
    ("pretrain", "eval_seqs", 10**8, r"\[pretrain\].eval_seqs: 100000000 is out of range"),
    ("pretrain", "tokns", 5, r"unknown key `tokns` \(did you mean `tokens`\?\)"),
    ("grid", "sizes", [], r"\[grid\].sizes must be a non-empty list"),
    ("grid", "data_tokens_max_by_size", {"100k": 4096}, "size '100k' is not in"),
])
def test_schema_refuses_bad_values_with_one_line(section, key, value, msg):
    d = spec_dict()
    d.setdefault(section, {})[key] = value
    with pytest.raises(SpecError, match=msg) as e:
        parse_spec(d)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("name", ["../../x", "a/b", "", ".hidden", "x" * 65, "sp ace"])
def test_spec_names_are_safe_file_names(name):
    d = spec_dict()
    d["name"] = name
    with pytest.raises(SpecError, match="spec name .* must be 1-64 letters"):
        parse_spec(d)


def test_spec_files_that_are_not_specs(tmp_path):
    with pytest.raises(SpecError, match="does not exist"):
        load_spec(tmp_path / "missing.toml")
    with pytest.raises(SpecError, match="is not a file"):
        load_spec(tmp_path)
    (tmp_path / "bad.toml").write_text("[grid\nsizes = 1")
    with pytest.raises(SpecError, match="is not valid TOML"):
        load_spec(tmp_path / "bad.toml")
    (tmp_path / "bin.toml").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(SpecError, match="cannot be read"):
        load_spec(tmp_path / "bin.toml")


def test_a_budget_that_cannot_reach_early_stopping_is_refused_naming_the_cell():
    from trainer.plan import check_budgets

    d = spec_dict()
    d["train"]["max_steps"] = 10
    with pytest.raises(SpecError, match=r"python\.none\.25k\.p0\.d4096\.s0-.*: max_steps 10 gives"):
        check_budgets(parse_spec(d))


def test_data_sizes_are_checked_against_the_reference_corpus_build():
    from trainer.corpora.store import reference_manifest
    from trainer.plan import check_sizes

    check_sizes(parse_spec(spec_dict()), reference_manifest())
    with pytest.raises(SpecError, match="D_F=1000000000 exceeds the .* bytes of python/train"):
        check_sizes(parse_spec(spec_dict(data_tokens=[10**9])), reference_manifest())
