import math
import time

import numpy as np
import pytest
import torch

from trainer.data import Corpora, Sampler, Stream
from trainer.model import EnsembleGPT, config_for
from trainer.train import (
    Member, Settings, _AdamW, _clip, load_checkpoint, save_checkpoint, train_group,
)
from _trainer_corpus import corpus_root

# Tiny models gain nothing from intra-op threads, and CI's few cores are shared.
torch.set_num_threads(1)

CFG = config_for("25k", ctx=32)
TEXT = np.frombuffer(b"for i in range(10):\n    print(i * i)\n" * 800, dtype=np.uint8).copy()
# Held-out text that shares bytes with TEXT but not its lines: a run first
# improves on it, then overfits, so early stopping has a real optimum.
VAL = np.frombuffer(b"while n > 0:\n    n = n - 1  # count down\n" * 60, dtype=np.uint8).copy()


def member(i, data_tokens=8000, init=None, **kw):
    return Member(f"m{i}", i, Stream([TEXT[:data_tokens]], [1.0]), Stream([VAL], [1.0]),
                  init=init, data_tokens=data_tokens, **kw)


def settings(**kw):
    base = dict(lr=3e-3, batch=8, eval_interval=5, eval_seqs=8, patience=3, warmup=5, max_steps=400)
    base.update(kw)
    return Settings(**base)


def test_run_learns_and_early_stops():
    r, = train_group(CFG, [member(0)], settings(), device=torch.device("cpu"))
    assert r["status"] == "ok"
    assert r["curve_loss"][0] > r["loss"] and r["curve_loss"][-1] > r["loss"]
    assert r["loss"] == min(r["curve_loss"])
    assert r["best_step"] < r["steps"] < 400
    assert r["steps"] - r["best_step"] == 3 * 5  # patience evaluations after the best
    assert len(r["curve_tokens"]) == len(r["curve_loss"]) == len(r["train_loss"])
    assert r["tokens_seen"] == r["steps"] * 8 * 32 and r["epochs"] == pytest.approx(r["tokens_seen"] / 8000)


def test_packed_group_equals_runs_alone():
    s = settings(max_steps=30, patience=100)
    packed = train_group(CFG, [member(0), member(1), member(2)], s, device=torch.device("cpu"))
    alone = train_group(CFG, [member(1)], s, device=torch.device("cpu"))[0]
    np.testing.assert_allclose(packed[1]["curve_loss"], alone["curve_loss"], rtol=1e-4)
    assert packed[0]["curve_loss"] != packed[1]["curve_loss"]


def test_cap_marks_run_capped():
    r, = train_group(CFG, [member(0)], settings(max_steps=30, patience=100), device=torch.device("cpu"))
    assert r["status"] == "capped" and "step 30" in r["status_reason"]
    assert r["steps"] == 30


def test_nan_member_fails_without_poisoning_the_group():
    s = settings(max_steps=40, patience=100)
    bad_state = EnsembleGPT(CFG, [9]).member_state(0)
    bad_state["w_fc"][0, 0, 0] = float("nan")
    res = train_group(CFG, [member(0), member(9, init=bad_state), member(2)], s, device=torch.device("cpu"))
    clean = train_group(CFG, [member(0), member(2)], s, device=torch.device("cpu"))
    assert res[1]["status"] == "failed" and "non-finite" in res[1]["status_reason"]
    assert math.isnan(res[1]["loss"])
    np.testing.assert_allclose(res[0]["curve_loss"], clean[0]["curve_loss"], rtol=1e-5)
    np.testing.assert_allclose(res[2]["curve_loss"], clean[1]["curve_loss"], rtol=1e-5)


def test_clip_is_per_member():
    p = torch.nn.Parameter(torch.zeros(2, 4))
    p.grad = torch.tensor([[3.0, 4.0, 0, 0], [0.1, 0, 0, 0]])
    _clip({"w": p}, 1.0)
    torch.testing.assert_close(p.grad[0].norm(), torch.tensor(1.0))
    torch.testing.assert_close(p.grad[1], torch.tensor([0.1, 0, 0, 0]))


def test_adamw_freezes_members_with_zero_rate_even_on_nan_gradients():
    p = torch.nn.Parameter(torch.ones(2, 3))
    opt = _AdamW({"w_fc": p}, settings())
    p.grad = torch.tensor([[1.0, 1, 1], [float("nan")] * 3])
    opt.step({"w_fc": p}, torch.tensor([0.1, 0.0]))
    assert torch.equal(p[1], torch.ones(3))
    assert torch.all(p[0] < 1)  # a step against the gradient, plus decay
    # One Adam step moves each weight by lr (sign of the gradient) plus decay.
    torch.testing.assert_close(p[0], torch.full((3,), (1 - 0.1 * 0.1) - 0.1), rtol=1e-4, atol=1e-4)


def test_pretraining_checkpoints_and_resume_after_deadline(tmp_path):
    cfg = CFG
    saved = {}

    def on_ckpt(m, p, tokens, state):
        saved[(m.run_id, p)] = tokens
        save_checkpoint(tmp_path / f"{m.run_id}-{p}.pt", cfg, state, {"p": p})

    mk = lambda: [Member("pre", 0, Stream([TEXT], [1.0]), Stream([TEXT[-2000:]], [1.0]),  # noqa: E731
                         checkpoints=[2048, 8192, 16384])]
    s = settings(eval_interval=16, total_tokens=16384)
    full = train_group(cfg, mk(), s, device=torch.device("cpu"), on_checkpoint=on_ckpt)[0]
    assert saved == {("pre", 2048): 2048, ("pre", 8192): 8192, ("pre", 16384): 16384}
    assert full["status"] == "ok" and full["tokens_seen"] == 16384
    state = load_checkpoint(tmp_path / "pre-8192.pt", cfg)
    with pytest.raises(ValueError, match="is for model"):
        load_checkpoint(tmp_path / "pre-8192.pt", config_for("100k"))

    # A kill right after the second checkpoint: the resume state holds the first.
    class Killed(Exception):
        pass

    def kill_at_8192(m, p, tokens, st):
        if p == 8192:
            raise Killed

    resume = tmp_path / "resume.pt"
    with pytest.raises(Killed):
        train_group(cfg, mk(), s, device=torch.device("cpu"), on_checkpoint=kill_at_8192, resume_path=resume)
    assert resume.exists()
    again = train_group(cfg, mk(), s, device=torch.device("cpu"), on_checkpoint=on_ckpt, resume_path=resume)[0]
    assert again["curve_loss"] == full["curve_loss"] and again["train_loss"] == full["train_loss"]
    for k, v in load_checkpoint(tmp_path / "pre-8192.pt", cfg).items():
        assert torch.equal(v, state[k])

    # Past the deadline a pre-training group saves its state and returns None.
    assert train_group(cfg, mk(), s, device=torch.device("cpu"), resume_path=tmp_path / "r2.pt",
                       deadline=time.monotonic() - 1) is None
    assert (tmp_path / "r2.pt").exists()


def test_subsets_are_nested_and_seeded(tmp_path):
    cp = Corpora(corpus_root(tmp_path))
    a, b = cp.subset("python", 5000, 0), cp.subset("python", 20000, 0)
    assert a.size == 5000 and b.size == 20000
    assert np.array_equal(b[:5000], a)
    assert not np.array_equal(cp.subset("python", 5000, 1), a)
    with pytest.raises(ValueError, match="exceeds"):
        cp.subset("python", 10**12, 0)


def test_sampler_batches_do_not_depend_on_the_pack():
    a = np.arange(1000, dtype=np.uint8)
    b = np.arange(3000, dtype=np.uint8)[::-1].copy()
    s1 = Sampler([Stream([a], [1.0]), Stream([b], [1.0])], [1, 2], 8, 4, torch.device("cpu"))
    s2 = Sampler([Stream([b], [1.0])], [2], 8, 4, torch.device("cpu"))
    x1, y1 = s1.next()
    x2, y2 = s2.next()
    assert torch.equal(x1[1], x2[0]) and torch.equal(y1[1], y2[0])
    assert torch.equal(x1[1, :, 1:], y1[1, :, :-1])


def test_a_failing_compiler_falls_back_to_eager():
    from trainer.train import _Compiled

    c = _Compiled(lambda x: x * 2)

    def broken(x):
        raise RuntimeError("backend exploded")

    c.fn = broken
    with pytest.warns(UserWarning, match="torch.compile failed .*backend exploded"):
        out = c(torch.ones(2))
    assert torch.equal(out, torch.full((2,), 2.0))
    assert torch.equal(c(torch.ones(1)), torch.full((1,), 2.0))


def test_a_mix_is_sampled_in_its_proportions():
    parts = [np.full(5000, k, dtype=np.uint8) for k in (1, 2, 3)]
    s = Sampler([Stream(parts, [0.5, 0.25, 0.25])], [0], 8, 4000, torch.device("cpu"))
    x, _ = s.next()
    share = [(x[0, :, 0] == k).float().mean().item() for k in (1, 2, 3)]
    np.testing.assert_allclose(share, [0.5, 0.25, 0.25], atol=0.03)
    assert all(torch.all(row == row[0]) for row in x[0])  # a window never straddles two parts
