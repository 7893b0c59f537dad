"""The grid specs shipped for the real experiments parse, expand and fit the plan."""
import math
from pathlib import Path

import pytest

from trainer.model import EnsembleGPT, config_for
from trainer.plan import CPU_PACK, GPU_PACK, cell_groups, check_budgets, group_seconds, pretrain_groups, pretrain_seconds
from trainer.spec import load_spec

SPECS = Path(__file__).parents[1] / "trainer" / "specs"


def n_of(size):
    return EnsembleGPT(config_for(size, ctx=8), [0]).n_params()


@pytest.mark.parametrize("name", ["text_to_python", "textcode_to_python"])
def test_transfer_specs_cover_the_plan(name):
    sp = load_spec(SPECS / f"{name}.toml")
    ns = sorted({n_of(c.size) for c in sp.cells})
    assert len(ns) >= 6 and math.log10(ns[-1] / ns[0]) >= 2.5
    ds = sorted({c.data_tokens for c in sp.cells})
    assert len(ds) >= 6 and math.log10(ds[-1] / ds[0]) >= 3
    smallest = ds[:2]
    for size in sp.sizes:
        for d in smallest:
            for src in ("none", sp.sources[1]):
                seeds = {c.seed for c in sp.cells if c.size == size and c.data_tokens == d and c.source == src}
                assert len(seeds) == 2, (size, d, src)
    # Small models see the largest D_F (where ossification was reported).
    assert max(c.data_tokens for c in sp.cells if c.size == sp.sizes[0]) == ds[-1]
    assert {c.source for c in sp.cells} == {"none", sp.sources[1]}
    assert sum(len(g) for g in cell_groups(sp, GPU_PACK)) == len(sp.cells)
    check_budgets(sp)


def test_the_two_transfer_specs_share_their_scratch_runs():
    a = load_spec(SPECS / "text_to_python.toml")
    b = load_spec(SPECS / "textcode_to_python.toml")
    sa = {c.run_id for c in a.cells if c.source == "none"}
    sb = {c.run_id for c in b.cells if c.source == "none"}
    assert sa == sb and sa
    # Pre-training is matched in tokens.
    assert {j.tokens for j in a.pretrain_jobs} == {j.tokens for j in b.pretrain_jobs}


def test_transfer_gap_spec():
    sp = load_spec(SPECS / "transfer_gap.toml")
    assert len(sp.sizes) == 1 and len(sp.pretrain_jobs) == 1
    job = sp.pretrain_jobs[0]
    ps = sorted({c.pretrain_tokens for c in sp.cells})
    assert ps[0] == 0 and len(ps) >= 5 and set(ps[1:]) <= set(job.checkpoints)
    assert len({c.data_tokens for c in sp.cells}) >= 5 and len(sp.targets) >= 3
    for t in sp.targets:
        for p in ps:
            assert len([c for c in sp.cells if c.target == t and c.pretrain_tokens == p]) >= 5


def cpu(name):
    return load_spec(SPECS / f"cpu_{name}.toml")


@pytest.mark.parametrize("name", ["text_to_python", "textcode_to_python"])
def test_cpu_transfer_specs_cover_the_plan(name):
    sp = cpu(name)
    check_budgets(sp)
    ns = sorted({n_of(c.size) for c in sp.cells})
    assert len(ns) >= 5 and math.log10(ns[-1] / ns[0]) >= 1.5
    ft = [c for c in sp.cells if c.source != "none"]
    ds = sorted({c.data_tokens for c in ft})
    assert len(ds) >= 5 and math.log10(ds[-1] / ds[0]) >= 2.4
    largest = max(sp.sizes, key=lambda s: n_of(s))
    for size in sp.sizes:  # every cell fine-tuned; the largest D_F may be left out for the largest size only
        have = {c.data_tokens for c in ft if c.size == size}
        assert have == set(ds) or (size == largest and have == set(ds[:-1])), size
        for d in ds[:2]:
            for src in ("none", sp.sources[1]):
                seeds = {c.seed for c in sp.cells if c.size == size and c.data_tokens == d and c.source == src
                         and c.pretrain_seed <= 0}
                assert len(seeds) == 2, (size, d, src)
    # scratch runs reach 4x beyond the largest fine-tuning D_F at some sizes
    assert any(c.data_tokens >= 4 * ds[-1] for c in sp.cells if c.source == "none")
    # two pre-training seeds at two sizes, each with fine-tuned runs over every D_F
    two = {j.size for j in sp.pretrain_jobs if j.seed == 1}
    assert len(two) == 2
    for size in two:
        assert {c.data_tokens for c in ft if c.size == size and c.pretrain_seed == 1} == set(ds)


def test_cpu_specs_share_scratch_runs_and_match_pretraining_tokens():
    a, b = cpu("text_to_python"), cpu("textcode_to_python")
    assert {c.run_id for c in a.cells if c.source == "none"} == {c.run_id for c in b.cells if c.source == "none"}
    assert {j.tokens for j in a.pretrain_jobs} == {j.tokens for j in b.pretrain_jobs}
    assert {(c.size, c.data_tokens, c.seed, c.pretrain_seed) for c in a.cells if c.source != "none"} == \
        {(c.size, c.data_tokens, c.seed, c.pretrain_seed) for c in b.cells if c.source != "none"}


def test_cpu_transfer_gap_spec():
    sp = cpu("transfer_gap")
    check_budgets(sp)
    assert len(sp.sizes) == 1 and len(sp.targets) >= 3
    ps = sorted({c.pretrain_tokens for c in sp.cells})
    assert ps[0] == 0 and len(ps) >= 5
    for t in sp.targets:
        for p in ps:
            assert len({c.data_tokens for c in sp.cells if c.target == t and c.pretrain_tokens == p}) >= 5


def test_cpu_grids_fit_sixteen_core_hours_at_measured_speeds():
    """By the cost model at the one-thread speeds measured on the project's CPU
    (trainer/BENCH.md: 25k 60K tok/s, 100k 26K, 800k 5.5K; other sizes at the
    same FLOP rate as their neighbours), runs shared between grids counted once."""
    speed = {"25k": 60e3, "50k": 37.8e3, "150k": 19.1e3, "330k": 10.7e3, "800k": 5.5e3}
    seen, total = set(), 0.0
    for name in ("text_to_python", "textcode_to_python", "transfer_gap"):
        sp = cpu(name)
        for g in pretrain_groups(sp, CPU_PACK):
            g = [j for j in g if j.job_id not in seen]
            seen |= {j.job_id for j in g}
            total += pretrain_seconds(g, speed[g[0].size] * len(g)) if g else 0
        for g in cell_groups(sp, CPU_PACK):
            g = [c for c in g if c.run_id not in seen]
            seen |= {c.run_id for c in g}
            total += group_seconds(g, speed[g[0].size] * len(g)) if g else 0
    assert 4 * 3600 < total < 16 * 3600


def test_micro_spec_is_tiny():
    sp = load_spec(SPECS / "micro.toml")
    assert sp.sizes == ["25k"] and max(c.data_tokens for c in sp.cells) <= 16384 and sp.pretrain["tokens"] <= 65536
