import math

import pytest
import torch

from trainer.model import SIZES, EnsembleGPT, config_for

# Tiny models gain nothing from intra-op threads, and CI's few cores are shared.
torch.set_num_threads(1)


def test_n_counted_from_module_matches_12_L_d2():
    ns = []
    for size in SIZES:
        cfg = config_for(size)
        n = EnsembleGPT(cfg, [0]).n_params()
        approx = 12 * cfg.n_layer * cfg.d_model**2
        assert abs(n - approx) / approx < 0.01, size  # only the norm gains differ
        ns.append(n)
    assert ns == sorted(ns)
    assert ns[0] <= 3e4 and ns[-1] >= 1e7
    assert math.log10(ns[-1] / ns[0]) >= 2.5


def test_unknown_size_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown model size 'huge'"):
        config_for("huge")


def test_packed_member_equals_single_model():
    cfg = config_for("100k", ctx=32)
    ens, one = EnsembleGPT(cfg, [3, 5, 7]), EnsembleGPT(cfg, [5])
    idx = torch.randint(0, 256, (1, 2, 32))
    packed = ens(idx.expand(3, -1, -1))
    torch.testing.assert_close(packed[1:2], one(idx), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(packed[0], packed[1])


def test_attention_is_causal():
    cfg = config_for("25k", ctx=16)
    m = EnsembleGPT(cfg, [0])
    idx = torch.randint(0, 256, (1, 1, 16))
    changed = idx.clone()
    changed[..., 10] = (changed[..., 10] + 1) % 256
    a, b = m(idx), m(changed)
    torch.testing.assert_close(a[..., :10, :], b[..., :10, :])
    assert not torch.allclose(a[..., 10:, :], b[..., 10:, :])


def test_members_do_not_share_gradients():
    cfg = config_for("25k", ctx=16)
    m = EnsembleGPT(cfg, [0, 1])
    idx = torch.randint(0, 256, (2, 3, 16))
    m.member_losses(idx, idx)[0].backward()
    for name, p in m.named_parameters():
        assert p.grad[1].abs().max() == 0, name
        assert p.grad[0].abs().max() > 0, name


def test_load_member_checks_shapes_and_names():
    m = EnsembleGPT(config_for("25k"), [0])
    other = EnsembleGPT(config_for("100k"), [0]).member_state(0)
    with pytest.raises(ValueError, match="checkpoint parameter .* has shape"):
        m.load_member(0, other)
    with pytest.raises(ValueError, match="do not match"):
        m.load_member(0, {"wte": other["wte"]})


def test_select_keeps_the_chosen_members():
    cfg = config_for("25k", ctx=16)
    m = EnsembleGPT(cfg, [0, 1, 2])
    keep = m.member_state(2)
    m.select([2])
    assert m.members == 1
    for n, p in m.named_parameters():
        assert torch.equal(p[0], keep[n])
