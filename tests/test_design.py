"""Which runs next: the importance-weighted preposterior against closed forms and brute force; bad inputs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from test_quantities import fake_fit

from bayes_transfer.design import (
    LinearPreposterior,
    Preposterior,
    greedy,
    next_runs,
    parse_target,
    run_spec,
)

PAIR = "text->python"


# ---------------------------------------------------------------- closed forms


def test_normal_normal_expected_variance_is_the_conjugate_posterior_variance():
    # theta ~ N(0, 1); a run observes theta + N(0, s^2): posterior variance 1 / (1 + 1/s^2) whatever it shows
    rng = np.random.default_rng(0)
    theta = rng.standard_normal(20000)
    sig = np.array([0.5, 2.0])
    engine = Preposterior(theta, np.vstack([theta, theta]), np.repeat(sig[:, None], theta.size, 1), np.inf,
                          n_worlds=300, seed=1)
    for batch, precision in (([0], 1 + 4), ([1], 1 + 0.25), ([0, 1], 1 + 4 + 0.25)):
        crit, ess = engine.criterion(batch)
        assert crit.mean() == pytest.approx(1 / precision, rel=0.04), batch
        assert crit.std() / crit.mean() < 0.15  # the posterior variance barely depends on the outcome
    assert np.all(ess > 500)


@pytest.mark.parametrize("engine_cls", [Preposterior, LinearPreposterior])
def test_joint_conditioning_matches_bayesian_linear_regression(engine_cls):
    # theta = (a, b) ~ N(0, I); a run at x observes a + b x + N(0, 0.3^2). The posterior variance of b
    # after a batch X is [(I + X'X / s^2)^-1]_bb: two runs together say more than either alone.
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((2, 15000))
    xs = np.array([-1.0, 0.0, 1.0, 2.0])
    s = 0.3
    mu = a[None, :] + b[None, :] * xs[:, None]
    engine = engine_cls(b, mu, np.full(mu.shape, s), np.inf, n_worlds=200, seed=3)

    def exact(batch):
        X = np.column_stack([np.ones(len(batch)), xs[batch]])
        return np.linalg.inv(np.eye(2) + X.T @ X / s**2)[1, 1]

    for batch in ([1], [2], [0, 2], [1, 3], [0, 1, 3]):
        assert engine.criterion(batch)[0].mean() == pytest.approx(exact(batch), rel=0.06), batch
    # greedy with equal costs: x = 2 first (most leverage on b), then the run that best complements it
    rows, _ = greedy(engine, np.ones(4), budget=2.0)
    assert [r["index"] for r in rows][0] == 3
    second = min((c for c in range(4) if c != 3), key=lambda c: exact([3, c]))
    assert rows[1]["index"] == second
    assert rows[1]["criterion_after"] == pytest.approx(exact([3, second]), rel=0.06)


@pytest.mark.parametrize("engine_cls", [Preposterior, LinearPreposterior])
def test_lookahead_finds_runs_that_only_inform_together(engine_cls):
    # target a; run 0 sees a + 2 b, run 1 sees b (weak alone, together they pin a: variance 0.047),
    # run 2 sees a through heavy noise. Budget for two runs: one-at-a-time greedy takes run 2 first
    # and ends at variance 0.59 (closed forms of the Gaussian posterior).
    rng = np.random.default_rng(8)
    a, b = rng.standard_normal((2, 20000))
    mu = np.vstack([a + 2 * b, b, a])
    sigma = np.array([0.1, 0.1, 1.5])[:, None] * np.ones_like(mu)
    engine = engine_cls(a, mu, sigma, np.inf, n_worlds=150, seed=9)
    myopic, _ = greedy(engine, np.ones(3), budget=2.0, lookahead=1)
    ahead, _ = greedy(engine, np.ones(3), budget=2.0, lookahead=2)
    assert myopic[0]["index"] == 2
    assert sorted(r["index"] for r in ahead) == [0, 1]
    assert ahead[-1]["criterion_after"] == pytest.approx(0.047, rel=0.15)
    assert myopic[-1]["criterion_after"] == pytest.approx(0.59, rel=0.1)


def test_brute_force_posterior_by_quadrature_on_a_nonlinear_law():
    # A saturating law log y = log(exp(u) + x^-v) + noise, prior u ~ N(0, 0.5), v ~ N(1, 0.3).
    # Brute force: for each simulated outcome, the exact posterior of v on a fine grid.
    rng = np.random.default_rng(4)
    S, s, x = 20000, 0.05, 0.25
    u, v = rng.normal(0, 0.5, S), rng.normal(1, 0.3, S)

    def law(u, v):
        return np.log(np.exp(u) + x ** -v)

    engine = Preposterior(v, law(u, v)[None, :], np.full((1, S), s), np.inf, n_worlds=30, seed=5)
    crit, _ = engine.criterion([0])
    gu, gv = np.meshgrid(np.linspace(-2.5, 2.5, 301), np.linspace(-0.5, 2.5, 301), indexing="ij")
    log_prior = -0.5 * (gu / 0.5) ** 2 - 0.5 * ((gv - 1) / 0.3) ** 2
    exact = []
    for y in engine.y[:, 0]:
        lp = log_prior - 0.5 * ((y - law(gu, gv)) / s) ** 2
        w = np.exp(lp - lp.max())
        w /= w.sum()
        m = (w * gv).sum()
        exact.append((w * (gv - m) ** 2).sum())
    exact = np.array(exact)
    # world by world, and on average, the reweighted draws give the exact posterior variance
    np.testing.assert_allclose(crit, exact, rtol=0.15)
    assert crit.mean() == pytest.approx(exact.mean(), rel=0.05)
    assert exact.mean() < 0.8 * v.var()  # the run is informative: the test is not vacuous


@pytest.mark.parametrize("engine_cls", [Preposterior, LinearPreposterior])
def test_regret_of_a_decision_falls_by_the_value_of_information(engine_cls):
    # Two plans; plan 1's loss is theta, plan 0's is 0. Perfect information removes all regret,
    # no information leaves E[max(0, -theta)] ... computed against the closed form for theta ~ N(0.1, 1).
    rng = np.random.default_rng(6)
    theta = rng.normal(0.1, 1.0, 40000)
    losses = np.column_stack([np.zeros_like(theta), theta])
    exact_run = engine_cls(losses, theta[None, :], np.full((1, theta.size), 1e-3), np.inf, n_worlds=400, seed=7)
    useless = engine_cls(losses, np.zeros((1, theta.size)), np.ones((1, theta.size)), np.inf, n_worlds=400, seed=7)
    from scipy.stats import norm

    # choosing plan 0 (E[theta] > 0) regrets max(0, -theta): E = sigma phi(m/sigma) - m Phi(-m/sigma)
    prior_regret = norm.pdf(0.1) - 0.1 * norm.cdf(-0.1)
    assert useless.criterion([0])[0].mean() == pytest.approx(prior_regret, rel=0.03)
    assert exact_run.criterion([0])[0].mean() < 0.02 * prior_regret


def test_from_a_wide_prior_reweighting_collapses_and_the_linear_engine_does_not():
    # theta ~ N(0, 10^2) (a prior, no data yet); one run sees theta + N(0, 0.01^2): posterior variance
    # 1 / (1/100 + 1e4). Reweighting 2,000 prior draws leaves about two draws per world,
    # whose variance is meaningless; the Gaussian update is exact here.
    rng = np.random.default_rng(4)
    theta = rng.normal(0.0, 10.0, 2000)
    args = (theta, theta[None, :], np.full((1, theta.size), 0.01), np.inf)
    crit, ess = Preposterior(*args, n_worlds=100, seed=5).criterion([0])
    assert np.median(ess) < 5
    lin, lin_ess = LinearPreposterior(*args, n_worlds=100, seed=5).criterion([0])
    assert lin.mean() == pytest.approx(1 / (1 / theta.var(ddof=1) + 1e4), rel=0.01)
    assert np.isnan(lin_ess).all()


def test_linear_engine_with_student_t_noise_uses_its_variance():
    # Student-t noise of scale s and nu = 4 has variance 2 s^2: the run counts as a normal one of that variance
    rng = np.random.default_rng(11)
    theta = rng.standard_normal(30000)
    engine = LinearPreposterior(theta, theta[None, :], np.full((1, theta.size), 0.5), np.full(theta.size, 4.0))
    assert engine.criterion([0])[0].mean() == pytest.approx(1 / (1 + 1 / (2 * 0.25)), rel=0.03)


# ---------------------------------------------------------------- next_runs on a fit


def cands(sizes=(1e5, 1e6, 1e7), data=(1e5, 1e6), sources=("none", "text"), pretrain=1e8):
    rows = []
    for i, n in enumerate(sizes):
        for d in data:
            for src in sources:
                rows.append(dict(size=["25k", "100k", "330k", "800k"][i], n_params=n, data_tokens=int(d), source=src,
                                 target="python", pretrain_tokens=0 if src == "none" else pretrain, seed=1,
                                 cost_core_hours=n * d / 1e11, cost_flops=6 * n * d))
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def fit():
    return fake_fit(spread=0.2, seed=1, noise=(0.02, 5.0))


def test_next_runs_respects_the_budget_and_reports_gains(fit, tmp_path):
    c = cands()
    res = next_runs(fit, c, target=f"multiplier:N=1e6,D_F=1e5,pair={PAIR}", budget=1.0, n_worlds=64,
                    max_draws=400)
    t = res.table
    assert 0 < len(t) and t["cost"].sum() <= 1.0 + 1e-12
    assert np.all(t["expected_gain"] > 0) and np.all(np.diff(t["criterion_after"]) < 0)
    assert res.after < res.before and res.width_after < res.width_before
    assert res.scale == "log"
    # a fine-tuned run informs the multiplier more than a scratch one at the same cost
    assert (t["source"] != "none").any()
    assert res.write_spec(tmp_path / "next.toml").exists()
    assert "Next runs for multiplier" in res.to_markdown()


def test_a_parameter_target_and_the_decision_target(fit):
    c = cands()
    beta = next_runs(fit, c, target="beta", budget=0.5, n_worlds=32, max_draws=300)
    assert beta.table["n_params"].nunique() >= 1 and beta.after < beta.before
    regret = next_runs(fit, c, target="regret", budget=0.5, n_worlds=32, max_draws=300,
                       decision=dict(budget=1000.0, cost_finetune=1e-3, cost_params=1e-3,
                                     current=dict(n_params=1e6, data_tokens=1e5, pretrain_tokens=1e8)))
    assert regret.scale == "loss" and regret.after <= regret.before and regret.width_before is None


def test_parse_target():
    t = parse_target("multiplier:N=3e5, D_F=1e5, pair=text->python")
    assert (t.name, t.N, t.D_F, t.pair) == ("multiplier", 3e5, 1e5, "text->python")
    assert parse_target("alpha_N:target=python").group == "python"
    with pytest.raises(ValueError, match="unknown key 'M'"):
        parse_target("multiplier:M=3")
    with pytest.raises(ValueError, match="not a number"):
        parse_target("D_T:N=big")


@pytest.mark.parametrize("kwargs, message", [
    (dict(target="wisdom"), "unknown target 'wisdom'"),
    (dict(target="multiplier"), "needs N= and D_F="),
    (dict(budget=0), "budget must be a positive"),
    (dict(budget=-3), "budget must be a positive"),
    (dict(budget=1e-9), "below the cheapest candidate"),
    (dict(cost="dollars"), "unknown cost column"),
])
def test_bad_requests(fit, kwargs, message):
    args = dict(target="beta", budget=1.0) | kwargs
    with pytest.raises(ValueError, match=message):
        next_runs(fit, cands(), **args)


@pytest.mark.parametrize("change, message", [
    (dict(source="code"), "pair code->python is not in the fit"),
    (dict(target="german"), "target 'german' is not in the fit"),
    (dict(pretrain_tokens=5e7), "no term for pre-training amount"),
    (dict(n_params=-1.0), "n_params must be a positive"),
])
def test_candidates_outside_the_domain(fit, change, message):
    c = cands(sources=("text",))
    for k, v in change.items():
        c.loc[0, k] = v
    with pytest.raises(ValueError, match=message):
        next_runs(fit, c, target="beta", budget=1.0)


def test_unconverged_and_point_estimate_fits_are_refused():
    bad = fake_fit(spread=0.2)
    bad.converged = False
    with pytest.raises(ValueError, match="did not converge"):
        next_runs(bad, cands(), target="beta", budget=1.0)
    bad.sampler = {"method": "map"}
    with pytest.raises(ValueError, match="MAP point estimate"):
        next_runs(bad, cands(), target="beta", budget=1.0)


# ---------------------------------------------------------------- trainer specs


def _spec(text):
    import tomllib

    spec_mod = pytest.importorskip("trainer.spec")
    return spec_mod.parse_spec(tomllib.loads(text), text)


@pytest.mark.parametrize("seed", range(6))
def test_specs_expand_to_exactly_the_chosen_runs(seed):
    rng = np.random.default_rng(seed)
    c = cands(sizes=(1e5, 1e6, 1e7, 3e7), data=(8192, 32768, 131072), pretrain=4194304)
    c["seed"] = rng.integers(0, 2, len(c))
    chosen = c.iloc[np.sort(rng.choice(len(c), size=int(rng.integers(1, len(c))), replace=False))]
    base = {"pretrain": {"tokens": 4194304, "eval_interval": 200}, "train": {"batch": 16, "patience": 4}}
    text = run_spec(chosen, base)
    cells = [(c.size, c.target, c.source, c.pretrain_tokens, c.data_tokens, c.seed) for c in _spec(text).cells]
    want = [(r.size, r.target, r.source, int(r.pretrain_tokens), int(r.data_tokens), int(r.seed))
            for r in chosen.itertuples()]
    assert sorted(cells) == sorted(want)
    assert "batch = 16" in text


def test_the_spec_reuses_the_fitted_grids_pre_training():
    # the fitted grid pre-trained to 4 and 8 MiB; the chosen runs use 4 MiB only
    import xarray as xr

    grid_text = ("[grid]\nsizes = [\"25k\", \"100k\"]\ntargets = [\"python\"]\nsources = [\"none\", \"text\"]\n"
                 "data_tokens = [8192, 32768]\npretrain_tokens = [4194304, 8388608]\nseeds = [1]\n\n"
                 "[pretrain]\ntokens = 8388608\n\n[train]\nbatch = 16\n")
    fit = type("F", (), {"grid": xr.Dataset(attrs={"spec": grid_text})})()
    from bayes_transfer.design_io import spec_base

    base = spec_base(fit)
    assert base["pretrain"]["checkpoints"] == [4194304, 8388608]
    c = cands(sizes=(1e5, 1e6), data=(32768,), pretrain=4194304)
    new, grid = _spec(run_spec(c, base)), _spec(grid_text)
    assert {j.job_id for j in new.pretrain_jobs} == {j.job_id for j in grid.pretrain_jobs}
    assert {c.run_id for c in new.cells} <= {c.run_id for c in grid.cells}


# ---------------------------------------------------------------- the command


@pytest.fixture
def cli(tmp_path, monkeypatch, fit):
    import importlib

    from typer.testing import CliRunner

    from bayes_transfer.cli import app

    fit_module = importlib.import_module("bayes_transfer.fit")  # the module, not the function it exports

    state = {"fit": fit}
    monkeypatch.setattr(fit_module, "load_fit", lambda path: state["fit"])
    table = tmp_path / "candidates.csv"
    cands().to_csv(table, index=False)
    out = tmp_path / "next.toml"

    def invoke(*extra, target="beta", budget="1.0"):
        args = ["next-runs", "fit.nc", "--target", target, "--budget", budget, "--candidates", str(table),
                "--out", str(out), "--worlds", "16", *extra]
        return CliRunner().invoke(app, args)

    return invoke, out, table, state


@pytest.mark.parametrize("kwargs, message", [
    (dict(target="wisdom"), "unknown target 'wisdom'"),
    (dict(budget="0"), "--budget must be positive"),
    (dict(budget="-2"), "--budget must be positive"),
    (dict(budget="1e-9"), "below the cheapest candidate"),
    (dict(target="regret"), "needs --plan-budget"),
])
def test_command_bad_input_is_one_line_exit_1_and_writes_nothing(cli, kwargs, message):
    invoke, out, _, _ = cli
    result = invoke(**kwargs)
    assert result.exit_code == 1, result.output
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 3  # one message (rich may wrap it)
    assert not out.exists() and not out.with_name("next.runs.csv").exists()


def test_command_refuses_an_unconverged_fit_and_candidates_outside_the_domain(cli):
    invoke, out, table, state = cli
    bad = fake_fit(spread=0.2)
    bad.converged = False
    bad.diagnostics = lambda: "NOT CONVERGED: max r_hat 1.2"
    state["fit"] = bad
    result = invoke()
    assert result.exit_code == 1 and "did not converge" in result.stderr
    state["fit"] = fake_fit(spread=0.2)
    c = cands()
    c.loc[3, "target"] = "german"
    c.to_csv(table, index=False)
    result = invoke()
    assert result.exit_code == 1 and "outside the law's domain" in result.stderr
    assert not out.exists()


def test_command_writes_the_spec_and_the_table(cli):
    invoke, out, _, _ = cli
    result = invoke(target=f"multiplier:N=1e6,D_F=1e5,pair={PAIR}")
    assert result.exit_code == 0, result.output
    written = sorted(p.name for p in out.parent.iterdir())
    table = pd.read_csv(out.with_name("next.runs.csv"))
    assert {"expected_gain", "cost", "size"} <= set(table.columns) and table["cost"].sum() <= 1.0
    assert "next.toml" in written or "next.1.toml" in written
    assert "Next runs for multiplier" in result.stdout


@pytest.mark.slow
def test_importance_weighting_agrees_with_nuts_refits(tmp_path):
    """Brute force with the real sampler: refit with the chosen run's simulated outcome, world by world."""
    import warnings

    import bayes_transfer as bt
    from bayes_transfer.design import candidate_predictions, target_draws
    from bayes_transfer.models import simulate_losses

    truth = dict(N_c=1.5e6, D_c=1.5e6, alpha_N=0.15, alpha_D=0.3, k=30.0, alpha=0.3, beta=0.38, omega=0.0)
    seed_design = cands(sizes=(24736, 332448), data=(8192, 131072), pretrain=4194304)
    runs = simulate_losses(seed_design[["n_params", "data_tokens", "source", "target", "pretrain_tokens", "seed"]],
                           "transfer", truth, sigma=0.02, seed=0)
    sampler = dict(chains=2, draws=600, warmup=400, progress=False)

    def fit_runs(table):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return bt.fit(table, law="transfer", **sampler).accept_unconverged()

    base = fit_runs(runs)
    target = parse_target("multiplier:N=3.3e5,D_F=32768")
    values, _ = target_draws(base, target)
    pool = cands(sizes=(98624, 787584), data=(32768,), pretrain=4194304)
    mu, sig, nu, _ = candidate_predictions(base, pool)
    engine = Preposterior(values, mu, sig, nu, n_worlds=3, seed=1)
    c = int(np.argmin([engine.criterion([j])[0].mean() for j in range(len(pool))]))
    crit, ess = engine.criterion([c])
    refit = []
    for m in range(3):
        run = pool.iloc[[c]][runs.columns.drop("loss")].assign(loss=float(np.exp(engine.y[m, c])))
        refit.append(target_draws(fit_runs(pd.concat([runs, run], ignore_index=True)), target)[0].var(ddof=1))
    assert np.all(ess > 30)
    assert crit.mean() == pytest.approx(np.mean(refit), rel=0.25)


@pytest.mark.slow  # a minute or more of NUTS: `make test-slow`
def test_a_first_batch_from_the_prior_alone():
    from bayes_transfer.design import prior_fit

    c = cands(sizes=(24736, 98624, 332448), data=(8192, 131072), pretrain=4194304)
    prior = prior_fit(c, law="transfer", seed=0)
    assert prior.sampler["method"] == "prior" and prior.posterior.sizes["draw"] >= 500
    # the draws are the prior's: wide, not a fit to the placeholder losses
    assert float(np.log(prior.posterior["beta"]).std()) > 0.1
    with pytest.warns(UserWarning, match="prior alone"):
        res = next_runs(prior, c, target="multiplier:N=1e5,D_F=8192", budget=0.5, n_worlds=32, max_draws=500)
    assert "Bayes-linear" in res.approximation  # reweighting prior draws collapses (test above)
    t = res.table
    assert len(t) >= 2 and t["cost"].sum() <= 0.5
    assert res.after < res.before and res.width_after < res.width_before
    assert np.all(t["expected_gain"] > 0)
    # the multiplier compares the two laws: the batch has scratch and fine-tuned runs at the target's D_F
    at_target = t[t["data_tokens"] == 8192]
    assert {"none", "text"} <= set(at_target["source"])


def test_candidates_from_two_pre_training_runs_are_two_candidates_and_keep_their_run():
    from bayes_transfer.design_io import load_candidates

    c = cands(sizes=(1e5,), data=(8192,), sources=("text",), pretrain=4194304)
    two = pd.concat([c.assign(pretrain_seed=0), c.assign(pretrain_seed=1)], ignore_index=True)
    assert len(load_candidates(two)) == 2
    with pytest.raises(ValueError, match="are the same run"):
        load_candidates(pd.concat([c, c], ignore_index=True))
    base = {"pretrain": {"tokens": 4194304, "seeds": [0, 1]}, "train": {"batch": 16}}
    spec = _spec(run_spec(load_candidates(two), base))
    assert sorted(c.pretrain_seed for c in spec.cells) == [0, 1] and len(spec.pretrain_jobs) == 2


def test_the_fits_pre_training_runs_are_found_by_source_size_and_seed():
    import json
    from types import SimpleNamespace

    from bayes_transfer.design_io import pretrain_runs_of

    runs = pd.DataFrame(dict(source=["none", "text", "text", "text"], n_params=[1e5] * 4,
                             pretrain_run=["", "pre.text.100k-ab", "pre.text.100k.s1-cd", "pre.text.100k-ab"]))
    attrs = {"pretrain": json.dumps({"pre.text.100k-ab": {"seed": 0}, "pre.text.100k.s1-cd": {"seed": 1}})}
    fit = SimpleNamespace(grid=SimpleNamespace(runs=runs, attrs=attrs))
    assert pretrain_runs_of(fit) == {"pre.text.100k-ab": ("text", 100000, 0), "pre.text.100k.s1-cd": ("text", 100000, 1)}
    # a table without pre-training ids: one run per (source, size), seed unknown
    plain = SimpleNamespace(grid=SimpleNamespace(runs=runs.drop(columns="pretrain_run"), attrs={}))
    assert list(pretrain_runs_of(plain).values()) == [("text", 100000, -1)]
