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


# ---------------------------------------------------------------- [[run]]: an explicit list of cells

GRID = {"grid": dict(sizes=["25k", "50k"], targets=["python"], sources=["none", "text"], data_tokens=[4096, 16384],
                     pretrain_tokens=[32768, 65536], seeds=[0]),
        "pretrain": {"tokens": 65536}, "train": {"batch": 2, "eval_interval": 3, "eval_seqs": 4, "patience": 1}}


def runs_spec(runs, **pretrain):
    return {"run": runs, "pretrain": {"tokens": 65536, **pretrain}, "train": dict(GRID["train"])}


def test_a_run_list_expands_to_exactly_its_cells_and_reuses_the_grids_pre_training():
    grid = parse_spec(GRID)
    runs = [dict(size="50k", target="python", source="text", pretrain_tokens=32768, data_tokens=16384),
            dict(size="25k", target="python", source="none", data_tokens=4096),
            dict(size="25k", target="python", source="text", pretrain_tokens=65536, data_tokens=4096, seed=3)]
    sp = parse_spec(runs_spec(runs, checkpoints=[32768]))
    assert [(c.size, c.source, c.pretrain_tokens, c.data_tokens, c.seed) for c in sp.cells] == [
        ("50k", "text", 32768, 16384, 0), ("25k", "none", 0, 4096, 0), ("25k", "text", 65536, 4096, 3)]
    # with the grid's checkpoints listed, the pre-training runs are the grid's own (same identity, so
    # `grid run` into the grid's directory reuses them) and a cell the grid has is the same cell
    assert {j.job_id for j in sp.pretrain_jobs} == {j.job_id for j in grid.pretrain_jobs}
    assert {c.run_id for c in sp.cells[:2]} <= {c.run_id for c in grid.cells}
    # without them the 25k pre-training saves only what this spec needs, and is a different run
    alone = parse_spec(runs_spec(runs[2:]))
    assert alone.pretrain_jobs[0].checkpoints == (65536,)
    assert alone.pretrain_jobs[0].job_id not in {j.job_id for j in grid.pretrain_jobs}


def test_a_grid_and_a_run_list_together():
    d = dict(GRID, run=[dict(size="50k", target="python", source="none", data_tokens=65536)])
    sp = parse_spec(d)
    assert len(sp.cells) == len(parse_spec(GRID).cells) + 1
    assert sp.sizes == ["25k", "50k"] and sp.sources == ["none", "text"]


@pytest.mark.parametrize("run,msg", [
    (dict(size="25k", target="python", data_tokens=4096), r"\[\[run\]\] 1: missing `source`"),
    (dict(size="1b", target="python", source="none", data_tokens=4096), "unknown model size '1b'"),
    (dict(size="25k", target="python", source="none", data_tokens=4096, pretrain_tokens=32768),
     "a scratch run"),
    (dict(size="25k", target="python", source="text", data_tokens=4096), "needs a positive `pretrain_tokens`"),
    (dict(size="25k", target="python", source="text", data_tokens=4096, pretrain_tokens=32768, pretrain_seed=7),
     r"pretrain_seed 7 is not in \[pretrain\].seeds"),
    (dict(size="25k", target="python", source="none", data_tokens=4096, sed=1), "unknown key `sed`"),
    (dict(size="25k", target="python", source="text", data_tokens=4096, pretrain_tokens=10**6),
     "at least the largest pretrain_tokens"),
])
def test_bad_runs_are_refused_naming_the_run(run, msg):
    with pytest.raises(SpecError, match=msg):
        parse_spec(runs_spec([run]))


def test_run_list_duplicates_and_checkpoints_are_checked():
    r = dict(size="25k", target="python", source="none", data_tokens=4096)
    with pytest.raises(SpecError, match=r"\[\[run\]\] 2 repeats an earlier run"):
        parse_spec(runs_spec([r, dict(r)]))
    with pytest.raises(SpecError, match=r"checkpoints: 131072 is beyond \[pretrain\].tokens"):
        parse_spec(runs_spec([r], checkpoints=[131072]))
    with pytest.raises(SpecError, match="must be a list of tables"):
        parse_spec({"run": 3})
    with pytest.raises(SpecError, match=r"missing \[grid\] table \(or \[\[run\]\] tables\)"):
        parse_spec({"train": {}})
