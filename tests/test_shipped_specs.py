"""The grid specs shipped for the real experiments parse, expand and fit the plan."""
import math
from pathlib import Path

import pytest

from trainer.grid import cell_groups, estimate, load_spec
from trainer.model import EnsembleGPT, config_for

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
    assert sum(len(g) for g in cell_groups(sp)) == len(sp.cells)


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


def test_the_three_grids_fit_the_gpu_budget():
    """About 20 minutes of one H100 in all by the dry-run estimate, the scratch
    runs shared by the two transfer grids counted once."""
    a, b, g = (load_spec(SPECS / f"{n}.toml") for n in ("text_to_python", "textcode_to_python", "transfer_gap"))
    b.cells = [c for c in b.cells if c.source != "none"]
    total = sum(estimate(sp)["total_s"] for sp in (a, b, g))
    assert 60 < total < 20 * 60


def test_micro_spec_is_tiny():
    sp = load_spec(SPECS / "micro.toml")
    assert sp.sizes == ["25k"] and max(sp.data_tokens) <= 16384 and sp.pretrain["tokens"] <= 65536
