"""The laws: closed forms against numeric root finding, log forms against natural forms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import brentq

from bayes_transfer import laws

KAPLAN = dict(N_c=6.4e13, D_c=1.8e13, alpha_N=0.076, alpha_D=0.103)
CHIN = dict(E=0.8, A=40.0, B=60.0, alpha_N=0.3, alpha_D=0.25)


def test_kaplan_log_form_matches_natural():
    N, D = np.array([1e5, 1e6, 3e7]), np.array([1e6, 1e8, 1e10])
    direct = ((KAPLAN["N_c"] / N) ** (0.076 / 0.103) + KAPLAN["D_c"] / D) ** 0.103
    np.testing.assert_allclose(laws.kaplan(N, D, **KAPLAN), direct, rtol=1e-12)


def test_kaplan_centred_roundtrip():
    log_N0, log_D0 = np.log(2e6), np.log(5e7)
    N, D = np.array([1e5, 2e6, 4e7]), np.array([1e6, 5e7, 1e9])
    log_L0, w, aN, aD = np.log(1.7), 0.3, 0.2, 0.15
    centred = laws.log_kaplan_centred(np.log(N) - log_N0, np.log(D) - log_D0, log_L0, w, aN, aD)
    N_c, D_c = laws.kaplan_from_centred(log_N0, log_D0, log_L0, w, aN, aD)
    np.testing.assert_allclose(np.exp(centred), laws.kaplan(N, D, N_c, D_c, aN, aD), rtol=1e-10)
    np.testing.assert_allclose(np.exp(centred[1]), 1.7, rtol=1e-12)


def test_chinchilla_log_form_matches_natural():
    N, D = np.array([1e5, 1e7]), np.array([1e6, 1e9])
    log_form = laws.log_chinchilla(np.log(N), np.log(D), np.log(0.8), np.log(40.0), np.log(60.0), 0.3, 0.25)
    np.testing.assert_allclose(np.exp(log_form), laws.chinchilla(N, D, **CHIN), rtol=1e-12)


@pytest.mark.parametrize("law, params", [("kaplan", KAPLAN), ("chinchilla", CHIN)])
@pytest.mark.parametrize("N, D", [(1e5, 3e6), (1e7, 1e9), (3e6, 2e4)])
def test_effective_data_inverts_by_root_finding(law, params, N, D):
    fn = laws.kaplan if law == "kaplan" else laws.chinchilla
    L = float(fn(N, D, **params))
    root = brentq(lambda logd: float(fn(N, np.exp(logd), **params)) - L, np.log(1.0), np.log(1e20), xtol=1e-13)
    assert float(laws.effective_data(law, N, L, **params)) == pytest.approx(np.exp(root), rel=1e-8)
    assert float(laws.effective_data(law, N, L, **params)) == pytest.approx(D, rel=1e-8)


@pytest.mark.parametrize("law, params", [("kaplan", KAPLAN), ("chinchilla", CHIN)])
def test_effective_data_is_inf_at_or_below_floor(law, params):
    N = 1e6
    fn = laws.kaplan if law == "kaplan" else laws.chinchilla
    floor = float(fn(N, jnp.inf, **params))
    out = laws.effective_data(law, N, jnp.array([floor * 0.5, floor * 0.999, floor * 1.001]), **params)
    assert np.isinf(out[0]) and np.isinf(out[1]) and np.isfinite(out[2]) and out[2] > 0
    grad = jax.grad(lambda L: laws.effective_data(law, N, L, **params))(floor * 0.9)
    assert not np.isnan(grad)


def test_effective_data_vmaps_and_differentiates():
    floor = float(laws.kaplan(1e6, jnp.inf, **KAPLAN))
    Ls = jnp.linspace(1.01, 1.5, 5) * floor
    out = jax.vmap(lambda L: laws.effective_data("kaplan", 1e6, L, **KAPLAN))(Ls)
    assert np.all(np.isfinite(out)) and np.all(np.diff(np.asarray(out)) < 0)  # more loss, less data
    g = jax.grad(lambda L: laws.effective_data("kaplan", 1e6, L, **KAPLAN))(1.2 * floor)
    assert float(g) < 0


def test_effective_data_rejects_bad_parameter_names():
    with pytest.raises(ValueError, match="missing"):
        laws.effective_data("kaplan", 1e6, 2.0, N_c=1.0, D_c=1.0, alpha_N=0.1)
    with pytest.raises(ValueError, match="unknown scratch law"):
        laws.effective_data("power", 1e6, 2.0)


def test_transferred_data_matches_published_example():
    # Hernandez text->python: k=1.9e4, alpha=0.18, beta=0.38
    DT = laws.transferred_data(1e6, 1e8, 1.9e4, 0.18, 0.38)
    assert float(DT) == pytest.approx(1.9e4 * 1e6**0.18 * 1e8**0.38, rel=1e-12)


def test_effective_finetune_data_ossification_sign():
    D_F, D_T = 1e8, 1e6
    no_oss = jnp.exp(laws.log_effective_finetune_data(np.log(D_F), np.log(D_T)))
    assert float(no_oss) - D_F == pytest.approx(D_T, rel=1e-8)
    oss = jnp.exp(laws.log_effective_finetune_data(np.log(D_F), np.log(D_T), omega=0.05))
    assert float(oss) - D_F == pytest.approx(D_T - 0.05 * D_F, rel=1e-8)
    assert float(oss) < D_F  # pre-training hurt: D_T_effective < 0


def test_transfer_gap_forms_agree():
    p, f = np.array([1e6, 1e8]), np.array([1e5, 1e7])
    args = dict(A_p=30.0, alpha_p=0.3, G=2.0, alpha_f=0.2, E=0.7)
    nat = laws.transfer_gap(p, f, **args)
    np.testing.assert_allclose(nat, (30 * p**-0.3 + 2.0) * f**-0.2 + 0.7, rtol=1e-12)
    logf = laws.log_transfer_gap(np.log(p), np.log(f), np.log(30.0), 0.3, np.log(2.0), 0.2, np.log(0.7))
    np.testing.assert_allclose(np.exp(logf), nat, rtol=1e-12)
    # infinite pre-training leaves G f^-alpha_f + E
    far = laws.transfer_gap(1e300, f, **args)
    np.testing.assert_allclose(far, 2.0 * f**-0.2 + 0.7, rtol=1e-12)
    sc = laws.log_gap_scratch(np.log(f), np.log(5.0), 0.2, np.log(0.7))
    np.testing.assert_allclose(np.exp(sc), laws.gap_scratch(f, 5.0, 0.2, 0.7), rtol=1e-12)


# ---------------------------------------------------------------- the registry and the data-constrained law

DC = dict(CHIN, R_D_star=5.0, R_N_star=3.0)


def test_every_law_is_registered_with_its_parts():
    for name, law in laws.LAWS.items():
        assert law.name == name and law.formula and law.reference and law.needs
        assert set(law.level) == set(law.params) and set(law.level.values()) <= {"target", "pair"}
        sites = [s.name for s in law.sites]
        assert len(sites) == len(set(sites))
        for site in law.sites:
            assert site.prior().support is not None and site.meaning
    with pytest.raises(ValueError, match="unknown law 'power'.*kaplan"):
        laws.get("power")


def test_repeated_data_closed_form():
    # one epoch is the unique data; repeats add less and less, up to D (1 + R*)
    assert laws.repeated_data(1e6, 1.0, 5.0) == pytest.approx(1e6)
    two = laws.repeated_data(1e6, 2.0, 5.0)
    assert two == pytest.approx(1e6 * (1 + 5.0 * (1 - np.exp(-1 / 5.0))))
    assert 1e6 < two < 2e6
    assert laws.repeated_data(1e6, 1e6, 5.0) == pytest.approx(6e6, rel=1e-9)


def test_data_constrained_law_is_chinchilla_at_one_epoch_and_inverts():
    law = laws.scratch("data_constrained")
    # with CHIN, 1e6 unique tokens are compute-optimal for N = 4.75e4 and 1e9 for N = 1.5e7
    n_opt = laws.compute_optimal_params(np.array([1e6, 1e9]), 40.0, 60.0, 0.3, 0.25)
    np.testing.assert_allclose(n_opt, 0.8 ** (1 / 0.3) * np.array([1e6, 1e9]) ** (0.25 / 0.3), rtol=1e-12)
    N, D = np.array([4e4, 1e7]), np.array([1e6, 1e9])
    np.testing.assert_allclose(law.loss(N, D, DC), laws.chinchilla(N, D, **CHIN), rtol=1e-12)
    many = law.loss(N, D, DC, epochs=10.0)
    np.testing.assert_allclose(many, laws.chinchilla(N, laws.repeated_data(D, 10.0, 5.0), **CHIN), rtol=1e-12)
    assert np.all(many < law.loss(N, D, DC))  # repeats help, a little
    # effective data is the single-epoch equivalent D'
    np.testing.assert_allclose(law.invert(N, many, DC), laws.repeated_data(D, 10.0, 5.0), rtol=1e-8)


def test_parameters_beyond_the_compute_optimal_size_are_worth_less():
    law = laws.scratch("data_constrained")
    D = 1e6
    U = laws.compute_optimal_params(D, 40.0, 60.0, 0.3, 0.25)
    N = U * np.array([0.5, 1.0, 2.0, 11.0, 1e4])
    useful = laws.useful_params(N, D, DC)
    # N' = N up to U_N, then U_N (1 + R_N* (1 - exp(-R_N / R_N*))), saturating at U_N (1 + R_N*) = 4 U_N
    np.testing.assert_allclose(useful[:2], N[:2], rtol=1e-12)
    np.testing.assert_allclose(useful[2:], U * (1 + 3.0 * (1 - np.exp(-(N[2:] / U - 1) / 3.0))), rtol=1e-12)
    assert np.all(np.diff(useful) > 0) and useful[-1] == pytest.approx(4 * U, rel=1e-9)
    # a huge R_N* makes every parameter count: the law is Chinchilla's again
    np.testing.assert_allclose(laws.useful_params(N, D, dict(DC, R_N_star=1e12)), N, rtol=1e-6)
    loss = law.loss(N, D, DC)
    assert np.all(loss[2:] > laws.chinchilla(N[2:], D, **CHIN))
    # inversion of an over-sized model's loss: back to its unique data, by bisection
    np.testing.assert_allclose(law.invert(N, loss, DC), np.full(N.shape, D), rtol=1e-9)
    assert np.isinf(law.invert(N[:1], law.floor(N[:1], DC), DC)).all()


def test_data_constrained_centred_log_form_matches_natural():
    import jax.numpy as jnp
    from types import SimpleNamespace

    law = laws.scratch("data_constrained")
    c = SimpleNamespace(log_N0=np.log(1e6), log_D0=np.log(1e7))
    # the first and last runs are far beyond the compute-optimal size for their data
    N, D, epochs = np.array([1e8, 1e6, 1e7, 1e9]), np.array([1e6, 1e7, 1e8, 1e5]), np.array([1.0, 4.0, 30.0, 2.0])
    s = {"E": 0.8, "alpha_N": 0.3, "alpha_D": 0.25, "R_D_star": 5.0, "R_N_star": 3.0,
         "A_term": 40.0 * 1e6 ** -0.3, "B_term": 60.0 * 1e7 ** -0.25}
    nat = law.natural({k: jnp.asarray(v) for k, v in s.items()}, c)
    assert float(nat["A"]) == pytest.approx(40.0) and float(nat["B"]) == pytest.approx(60.0)
    log_l = law.log_loss_centred(np.log(N) - c.log_N0, np.log(D) - c.log_D0, s, {"epochs": epochs})
    np.testing.assert_allclose(np.exp(log_l), law.loss(N, D, DC, epochs=epochs), rtol=1e-10)
    assert law.loss(N[:1], D[:1], DC)[0] > laws.chinchilla(N[:1], D[:1], **CHIN)[0] + 1e-3  # not vacuous
    with pytest.raises(ValueError, match="tokens_seen"):
        law.inputs(__import__("pandas").DataFrame({"data_tokens": [1.0]}))


def test_a_registered_law_fits_without_code_elsewhere():
    """The data-constrained law is only a registry entry; the models and the fit serve it as they are."""
    from bayes_transfer import fit
    from bayes_transfer.models import design_grid, simulate_grid

    design = design_grid(np.geomspace(1e5, 1e7, 4), np.geomspace(1e5, 1e8, 4))
    design["tokens_seen"] = design["data_tokens"] * np.tile([1.0, 3.0, 10.0, 30.0], 4)
    g = simulate_grid(design, "data_constrained", DC, sigma=0.005, seed=0)
    f = fit(g, "data_constrained", method="map", map_steps=3000)
    assert set(laws.DATA_CONSTRAINED.params) <= set(f.posterior.data_vars)
    assert f.posterior["R_D_star"].dims == ("chain", "draw", "target")
    assert f.config["priors"]["R_N_star"].startswith("LogNormal")
