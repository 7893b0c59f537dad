import math
import os
import time
import warnings

import numpy as np
import pytest
import torch

from trainer.data import Corpora, Sampler, Stream
from trainer.model import EnsembleGPT, config_for
from trainer.optim import AdamW, clip_per_member
from trainer.train import (
    Member, ResumeError, Settings, _eval_windows, early_evals, ema_decay, load_checkpoint,
    save_checkpoint, train_group,
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
    base = dict(lr=3e-3, batch=8, eval_interval=5, eval_seqs=8, report_seqs=16, patience=3, warmup=5, max_steps=400)
    base.update(kw)
    return Settings(**base)


def test_run_learns_and_early_stops():
    r, = train_group(CFG, [member(0)], settings(), device=torch.device("cpu"))
    assert r["status"] == "ok"
    assert r["curve_loss"][0] > r["loss_select"] and r["curve_loss"][-1] > r["loss_select"]
    assert r["loss_select"] == min(r["curve_loss"])
    assert r["best_step"] < r["steps"] < 400
    # patience counts regular evaluations of the smoothed curve, so at least 3 follow the best
    assert r["steps"] - r["best_step"] >= 3 * 5
    assert len(r["curve_tokens"]) == len(r["curve_loss"]) == len(r["train_loss"])
    assert r["tokens_seen"] == r["steps"] * 8 * 32 and r["epochs"] == pytest.approx(r["tokens_seen"] / 8000)
    # the reported loss is scored on the other half of the validation split
    assert math.isfinite(r["loss"]) and r["loss"] != r["loss_select"]
    assert r["report_seqs"] == 16 and r["eval_seqs"] == 8


def test_evaluates_at_step_zero_then_log_spaced_then_regularly():
    r, = train_group(CFG, [member(0)], settings(eval_interval=20, patience=2, max_steps=60),
                     device=torch.device("cpu"))
    steps = [t // (8 * 32) for t in r["curve_tokens"]]
    assert steps[:6] == [0, 4, 5, 7, 10, 14] and steps[6] == 20 and steps[7] == 40
    assert early_evals(20) == [4, 5, 7, 10, 14]
    assert early_evals(250)[0] == 4 and early_evals(250)[-1] == 177
    # step 0 is the initial weights: a byte model at init is close to a uniform guess
    assert abs(r["curve_loss"][0] - math.log(256)) < 0.2 and math.isnan(r["train_loss"][0])


def test_weight_average_spans_a_fixed_fraction_of_the_run():
    assert ema_decay(1) == 0.0  # the first average is the first iterate
    # the effective window, 1 / (1 - decay), is a fixed fraction 1 / (gamma + 1) of the steps so far
    from trainer.train import EMA_GAMMA

    for t in (1000, 10_000, 100_000):
        assert (1 / (1 - ema_decay(t))) / t == pytest.approx(1 / (EMA_GAMMA + 1), rel=0.01)


def test_selection_and_report_windows_come_from_disjoint_halves():
    val = Stream([np.arange(4000, dtype=np.int64)], [1.0])
    sel, rep = _eval_windows(val, 32, 16, 0), _eval_windows(val, 32, 16, 1)
    assert sel.max() < 2000 <= rep.min()
    assert sel.shape == rep.shape == (16, 33)


def test_packed_group_equals_runs_alone():
    s = settings(max_steps=30, patience=100)
    packed = train_group(CFG, [member(0), member(1), member(2)], s, device=torch.device("cpu"))
    alone = train_group(CFG, [member(1)], s, device=torch.device("cpu"))[0]
    # 1e-4 covers batched vs single matmul reductions on a CPU; on a GPU, with
    # non-deterministic attention and embedding backward, about 1e-3 would be needed.
    np.testing.assert_allclose(packed[1]["curve_loss"], alone["curve_loss"], rtol=1e-4)
    assert packed[0]["curve_loss"] != packed[1]["curve_loss"]


def test_cap_marks_run_capped():
    r, = train_group(CFG, [member(0)], settings(max_steps=30, patience=100), device=torch.device("cpu"))
    assert r["status"] == "capped" and "step 30" in r["status_reason"]
    assert math.isfinite(r["loss"])  # a capped run still reports its best weights, marked capped
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
    clip_per_member({"w": p}, 1.0)
    torch.testing.assert_close(p.grad[0].norm(), torch.tensor(1.0))
    torch.testing.assert_close(p.grad[1], torch.tensor([0.1, 0, 0, 0]))


def test_adamw_freezes_members_with_zero_rate_even_on_nan_gradients():
    p = torch.nn.Parameter(torch.ones(2, 3))
    opt = AdamW({"w_fc": p}, (0.9, 0.95), 0.1)
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
    # Exact on a CPU. On a GPU, attention and embedding backward kernels are not
    # deterministic: there the curves would agree to about 1e-3 nats, not bit for bit.
    np.testing.assert_array_equal(again["curve_loss"], full["curve_loss"])
    np.testing.assert_array_equal(again["train_loss"], full["train_loss"])
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


def test_a_compiler_failure_in_the_backward_pass_falls_back_to_eager():
    """AOTAutograd compiles the backward graph lazily, at the first backward:
    the fallback must cover it, not only the forward."""
    import contextlib

    from trainer.train import _Step

    model = EnsembleGPT(CFG, [0])
    step = _Step(model, False, contextlib.nullcontext())
    step.tried, step.compiled = False, True

    class Boom(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, g):
            raise RuntimeError("backward compiler exploded")

    step.fn = lambda x, y: Boom.apply(model.member_losses(x, y))
    x = torch.randint(0, 256, (1, 2, 32))
    with pytest.warns(UserWarning, match="torch.compile failed .*backward compiler exploded"):
        losses = step(x, x)
    assert not step.compiled and torch.isfinite(losses).all()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_a_crafted_resume_file_is_refused_without_running_it(tmp_path):
    """Resume state is loaded with weights_only: a pickle that would run code is refused."""
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    resume = tmp_path / "resume.pt"
    torch.save({"meta": Evil()}, resume)
    mk = [Member("pre", 0, Stream([TEXT], [1.0]), Stream([TEXT[-2000:]], [1.0]), checkpoints=[2048])]
    with pytest.raises(ResumeError, match="cannot be read"):
        train_group(CFG, mk, settings(total_tokens=4096), device=torch.device("cpu"), resume_path=resume)
    assert not marker.exists()


def test_an_unfinished_pretraining_resumes_only_under_the_code_that_began_it(tmp_path, monkeypatch):
    from trainer import provenance

    mk = lambda: [Member("pre", 0, Stream([TEXT], [1.0]), Stream([TEXT[-2000:]], [1.0]), checkpoints=[16384])]  # noqa: E731
    s = settings(eval_interval=16, total_tokens=16384)
    resume = tmp_path / "resume.pt"
    monkeypatch.setattr(provenance, "_CODE_VERSION", "a" * 40)
    assert train_group(CFG, mk(), s, device=torch.device("cpu"), resume_path=resume,
                       deadline=time.monotonic() - 1) is None
    monkeypatch.setattr(provenance, "_CODE_VERSION", "b" * 40)
    with pytest.raises(ResumeError, match="written by code aaaaaaaaaaaa and this is bbbbbbbbbbbb"):
        train_group(CFG, mk(), s, device=torch.device("cpu"), resume_path=resume)
    assert resume.exists()  # nothing lost: the right commit can still finish it
    monkeypatch.setattr(provenance, "_CODE_VERSION", "a" * 40)
    assert train_group(CFG, mk(), s, device=torch.device("cpu"), resume_path=resume)[0]["status"] == "ok"


def test_a_mix_is_sampled_in_its_proportions():
    parts = [np.full(5000, k, dtype=np.uint8) for k in (1, 2, 3)]
    s = Sampler([Stream(parts, [0.5, 0.25, 0.25])], [0], 8, 4000, torch.device("cpu"))
    x, _ = s.next()
    share = [(x[0, :, 0] == k).float().mean().item() for k in (1, 2, 3)]
    np.testing.assert_allclose(share, [0.5, 0.25, 0.25], atol=0.03)
    assert all(torch.all(row == row[0]) for row in x[0])  # a window never straddles two parts


# --- the GPU path, exercised on the CPU (slow: compilation takes a minute) ---
@pytest.mark.slow
def test_compiled_training_matches_eager_as_members_drop_out():
    """torch.compile of the step (forward and backward), with the pack thinning
    as members stop (each width is a new graph), agrees with eager fp32."""
    s = settings(max_steps=60, patience=2)
    ms = lambda: [member(0, 2000), member(1, 8000), member(2, 8000), member(3, 2000)]  # noqa: E731
    eager = train_group(CFG, ms(), s, device=torch.device("cpu"), compile=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # a fallback to eager would hide the compiled path
        compiled = train_group(CFG, ms(), s, device=torch.device("cpu"), compile=True)
    assert len({r["steps"] for r in eager}) > 1  # members did stop at different times
    for a, b in zip(eager, compiled):
        n = min(len(a["curve_loss"]), len(b["curve_loss"]))
        np.testing.assert_allclose(a["curve_loss"][:n], b["curve_loss"][:n], atol=2e-3)


@pytest.mark.slow
def test_bf16_autocast_tracks_fp32():
    """bf16 autocast (the GPU default) on the CPU: the curve follows fp32 to
    within bf16's precision (8 bits of mantissa: about 1e-2 nats here)."""
    s = settings(max_steps=40, patience=100)
    fp32 = train_group(CFG, [member(0)], s, device=torch.device("cpu"), bf16=False)[0]
    bf16 = train_group(CFG, [member(0)], s, device=torch.device("cpu"), bf16=True)[0]
    np.testing.assert_allclose(bf16["curve_loss"], fp32["curve_loss"], atol=3e-2)
    assert bf16["curve_loss"] != fp32["curve_loss"]  # autocast really ran



def test_pretraining_saves_resume_state_between_checkpoints(tmp_path, monkeypatch):
    """A kill long after the last checkpoint loses at most RESUME_EVERY_S of pre-training."""
    import trainer.train as tt

    mk = lambda: [Member("pre", 0, Stream([TEXT], [1.0]), Stream([TEXT[-2000:]], [1.0]),  # noqa: E731
                         checkpoints=[16384])]
    s = settings(eval_interval=16, total_tokens=16384)
    full = train_group(CFG, mk(), s, device=torch.device("cpu"))[0]

    class Killed(Exception):
        pass

    def kill(m, p, tokens, st):
        raise Killed

    monkeypatch.setattr(tt, "RESUME_EVERY_S", -1.0)  # save at every step
    resume = tmp_path / "resume.pt"
    with pytest.raises(Killed):
        train_group(CFG, mk(), s, device=torch.device("cpu"), on_checkpoint=kill, resume_path=resume)
    import json as _json

    assert _json.loads(torch.load(resume, weights_only=True)["meta"])["step"] == 63  # the step before the last
    again = train_group(CFG, mk(), s, device=torch.device("cpu"), resume_path=resume)[0]
    np.testing.assert_array_equal(again["curve_loss"], full["curve_loss"])


def test_a_cell_group_killed_after_dropping_a_member_resumes_exactly(tmp_path, monkeypatch):
    """Fine-tuning and scratch groups resume too: a kill after one member has
    stopped and been dropped loses nothing, and the rerun equals an
    uninterrupted one bit for bit (CPU)."""
    import trainer.train as tt

    mk = lambda: [member(0, data_tokens=1500), member(1, eval_interval=15)]  # noqa: E731 - stop at different steps
    s = settings(max_steps=300)
    full = train_group(CFG, mk(), s, device=torch.device("cpu"))
    first_stop = min(r["steps"] for r in full)
    assert first_stop < max(r["steps"] for r in full)

    class Killed(Exception):
        pass

    kill_at = first_stop + 7  # after the shorter member stopped and was dropped

    def progress(msg):
        if int(msg.split()[1].split("/")[0]) >= kill_at:
            raise Killed

    monkeypatch.setattr(tt, "RESUME_EVERY_S", -1.0)  # save at every step
    resume = tmp_path / "resume.pt"
    with pytest.raises(Killed):
        train_group(CFG, mk(), s, device=torch.device("cpu"), resume_path=resume, progress=progress)
    import json as _json

    meta = _json.loads(torch.load(resume, weights_only=True)["meta"])
    assert meta["active"] == [1] and first_stop < meta["step"] < full[1]["steps"]
    again = train_group(CFG, mk(), s, device=torch.device("cpu"), resume_path=resume)
    for a, b in zip(full, again):
        for k in ("curve_loss", "train_loss", "loss", "loss_select", "best_step", "steps", "status"):
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
        assert b["resumed_at_steps"] == [meta["step"]] and a["resumed_at_steps"] == []
