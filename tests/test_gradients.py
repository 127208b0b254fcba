"""Gradient-selection kernels (CRAIG, GradMatch, GLISTER) against references written here: torch autograd for the
gradients, naive greedy and brute-force counts for facility location, a from-scratch OMP for the incremental one."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from strategies.gradients import (
    craig_similarity,
    facility_location,
    glister_greedy,
    grad_proxies,
    omp_nonneg,
    omp_nonneg_gram,
    proxy_gram,
    representation_counts,
)


def last_layer_problem(seed, m=7, n_classes=4, n_feats=5):
    rng = np.random.default_rng(seed)
    feats = rng.normal(size=(m, n_feats))
    labels = rng.integers(0, n_classes, m)
    weight, bias = rng.normal(size=(n_classes, n_feats)), rng.normal(size=n_classes)
    return feats, labels, weight, bias


def softmax_err(feats, labels, weight, bias):
    z = feats @ weight.T + bias
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(len(z)), labels] -= 1
    return p


def autograd_layer_grad(feats, labels, weight, bias, reduction):
    """d CE / d (W, b) by torch autograd, in grad_proxies' layout (per class: H weights, then the bias)."""
    w = torch.tensor(weight, requires_grad=True)
    b = torch.tensor(bias, requires_grad=True)
    loss = F.cross_entropy(torch.tensor(feats) @ w.T + b, torch.tensor(labels), reduction=reduction)
    gw, gb = torch.autograd.grad(loss, (w, b))
    return torch.cat([gw, gb[:, None]], dim=1).reshape(-1).numpy()


@pytest.mark.parametrize("seed", range(3))
def test_grad_proxies_equal_autograd_per_sample_gradients(seed):
    feats, labels, weight, bias = last_layer_problem(seed)
    expected = np.stack([autograd_layer_grad(feats[i:i + 1], labels[i:i + 1], weight, bias, "sum")
                         for i in range(len(feats))])
    got = grad_proxies(softmax_err(feats, labels, weight, bias), feats)
    assert got.dtype == np.float32 and got.shape == (7, 4 * 6)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n_feats", [0, 5])  # 0: CORDS's linear_layer false, bias gradients only
def test_proxy_gram_equals_product_of_proxies(n_feats):
    rng = np.random.default_rng(1)
    ea, eb = rng.normal(size=(6, 3)), rng.normal(size=(4, 3))
    ha, hb = rng.normal(size=(6, n_feats)), rng.normal(size=(4, n_feats))
    expected = grad_proxies(ea, ha).astype(np.float64) @ grad_proxies(eb, hb).T.astype(np.float64)
    np.testing.assert_allclose(proxy_gram(ea, ha, eb, hb), expected, rtol=1e-5, atol=1e-5)


def test_craig_similarity_is_max_minus_squared_distance():
    rng = np.random.default_rng(2)
    err, feats = rng.normal(size=(9, 3)), rng.normal(size=(9, 4))
    g = grad_proxies(err, feats).astype(np.float64)
    dist = ((g[:, None, :] - g[None, :, :]) ** 2).sum(-1)
    sim = craig_similarity(proxy_gram(err, feats, err, feats))
    np.testing.assert_allclose(sim, dist.max() - dist, rtol=1e-4, atol=1e-4)
    assert sim.min() >= 0 and np.all(np.diag(sim) == sim.max())


def naive_facility_location(sim, k):
    cur, chosen, gains = np.zeros(len(sim), sim.dtype), [], []
    for _ in range(k):
        g = np.maximum(sim - cur, 0).sum(1)
        g[chosen] = -np.inf
        i = int(np.argmax(g))
        chosen.append(i)
        gains.append(g[i])
        cur = np.maximum(cur, sim[i])
    return np.array(chosen), np.array(gains)


def random_similarities(rng, n):
    """Continuous, small-integer (many tied gains) or duplicate-row similarity matrices, all >= 0."""
    kind = rng.integers(3)
    if kind == 0:
        return rng.random((n, n))
    if kind == 1:
        return rng.integers(0, 3, (n, n)).astype(np.float64)
    base = rng.integers(0, 4, (max(1, n // 2), n)).astype(np.float64)
    return base[rng.integers(0, len(base), n)]


def test_lazy_facility_location_equals_naive_greedy_with_ties():
    rng = np.random.default_rng(3)
    for _ in range(300):
        n = int(rng.integers(1, 14))
        sim, k = random_similarities(rng, n), int(rng.integers(1, n + 1))
        expected = naive_facility_location(sim, k)
        for batch in (1, 3, 32):
            chosen, gains = facility_location(sim, k, batch=batch)
            assert np.array_equal(chosen, expected[0]), (sim, k, batch)
            np.testing.assert_array_equal(gains, expected[1])
        sim32 = sim.astype(np.float32)  # the float32 path (CRAIG's similarities) against naive in float32
        assert np.array_equal(facility_location(sim32, k, batch=2)[0], naive_facility_location(sim32, k)[0])


def test_facility_location_gains_are_marginal_objective_values():
    sim = np.random.default_rng(4).random((40, 40)).astype(np.float32)
    chosen, gains = facility_location(sim, 12)
    objective = [sim[chosen[:t]].max(0).sum(dtype=np.float64) for t in range(1, 13)]
    np.testing.assert_allclose(np.cumsum(gains), objective, rtol=1e-5)
    assert np.all(np.diff(gains) <= 1e-9)  # submodular: greedy gains never grow


def test_representation_counts_equal_brute_force():
    rng = np.random.default_rng(5)
    for _ in range(20):
        n = int(rng.integers(2, 15))
        sim = random_similarities(rng, n)
        chosen = rng.choice(n, size=int(rng.integers(1, n + 1)), replace=False)
        expected = np.zeros(len(chosen))
        for j in range(n):
            best = max(range(len(chosen)), key=lambda a: (sim[chosen[a], j], -a))  # ties: earliest in `chosen`
            expected[best] += 1
        counts = representation_counts(sim, chosen, chunk=4)
        assert np.array_equal(counts, expected) and counts.sum() == n


def reference_omp(atoms, target, k, lam, tol):
    """The documented algorithm from scratch: explicit residual, full re-solve each step."""
    support, w, drops = [], np.empty(0), 0
    for _ in range(k):
        corr = atoms @ (target - atoms[support].T @ w)
        corr[support] = -np.inf
        j = int(np.argmax(corr))
        if corr[j] <= 0:
            break
        support.append(j)
        while True:
            a = atoms[support]
            w = np.linalg.solve(a @ a.T + lam * np.eye(len(support)), a @ target)
            if not len(w) or w.min() >= 0:
                break
            support.pop(int(np.argmin(w)))
            drops += 1
        if np.linalg.norm(target - atoms[support].T @ w) < tol * np.linalg.norm(target):
            break
    return np.array(support), w, drops


def test_omp_recovers_planted_nonnegative_combination():
    for seed in range(5):
        rng = np.random.default_rng(seed)
        atoms = rng.normal(size=(40, 1000)) / np.sqrt(1000)  # nearly orthonormal: coherence ~0.1 < 1 / (2 * 5 - 1)
        support = rng.choice(40, size=5, replace=False)
        weights = rng.uniform(0.5, 2.0, size=5)
        idx, w = omp_nonneg(atoms, atoms[support].T @ weights, k=12, lam=0.0, tol=1e-6)
        order = np.argsort(idx)
        assert np.array_equal(idx[order], np.sort(support))  # stopped at the exact fit: 5 atoms, not 12
        np.testing.assert_allclose(w[order], weights[np.argsort(support)], rtol=1e-8)


def test_omp_equals_from_scratch_reference_and_ridge_closed_form():
    total_drops = 0
    for seed in range(12):
        rng = np.random.default_rng(seed)
        atoms, target = rng.normal(size=(30, 20)), rng.normal(size=20)  # random target: negative weights happen
        lam = [0.0, 0.5, 3.0][seed % 3]
        idx, w = omp_nonneg(atoms, target, k=15, lam=lam, tol=1e-6)
        ref_idx, ref_w, drops = reference_omp(atoms, target, 15, lam, 1e-6)
        total_drops += drops
        assert np.array_equal(idx, ref_idx)
        np.testing.assert_allclose(w, ref_w, rtol=1e-7, atol=1e-10)
        a = atoms[idx]
        np.testing.assert_allclose(w, np.linalg.solve(a @ a.T + lam * np.eye(len(idx)), a @ target), rtol=1e-7)
        assert np.all(w >= 0)
        # GradMatch's float32 path: proxy-style Gram, target = the sum of the atoms
        gram = (atoms @ atoms.T).astype(np.float32)
        gidx, gw = omp_nonneg_gram(gram, gram.sum(1, dtype=np.float64), gram.sum(dtype=np.float64), 10, lam)
        sidx, sw, _ = reference_omp(atoms, atoms.sum(0), 10, lam, 1e-4)
        assert np.array_equal(gidx, sidx) and np.all(gw >= 0)
        np.testing.assert_allclose(gw, sw, rtol=1e-3)
    assert total_drops > 0  # the drop-and-re-solve path ran


def tiny_glister(seed, m=9, nv=6, n_classes=3, n_feats=4):
    feats, labels, weight, bias = last_layer_problem(seed, m + nv, n_classes, n_feats)
    err = softmax_err(feats[:m], labels[:m], weight, bias)
    return feats[:m], err, feats[m:], labels[m:], weight, bias


def glister_reference_gains(feats, err, val_feats, val_labels, weight, bias, picked, eta, bias_only):
    """eta * <g_i, mean validation CE gradient at theta - eta sum_{picked} g>, the gradient by autograd."""
    g = np.stack([autograd_layer_grad(feats[i:i + 1], np.argmin(err[i:i + 1], 1), weight, bias, "sum")
                  for i in range(len(err))]).reshape(len(err), len(bias), -1)  # argmin of softmax - onehot: label
    if bias_only:
        g = g[:, :, -1:]
    step = eta * g[picked].sum(0)
    w_s, b_s = weight.copy(), bias - step[:, -1]
    if not bias_only:
        w_s -= step[:, :-1]
    g_val = autograd_layer_grad(val_feats, val_labels, w_s, b_s, "mean").reshape(len(bias), -1)
    if bias_only:
        g_val = g_val[:, -1:]
    return eta * np.einsum("icd,cd->i", g, g_val)


@pytest.mark.parametrize("bias_only", [False, True])
def test_glister_naive_greedy_gains_equal_autograd_objective(bias_only):
    problem, eta = tiny_glister(0), 0.7
    chosen, gains = glister_greedy(*problem, k=5, eta=eta, bias_only=bias_only)
    for t in range(5):
        ref = glister_reference_gains(*problem, list(chosen[:t]), eta, bias_only)
        ref[chosen[:t]] = -np.inf
        assert chosen[t] == np.argmax(ref)
        np.testing.assert_allclose(gains[t], ref[chosen[t]], rtol=1e-9)


def test_glister_stochastic_gains_exact_and_full_sample_equals_naive():
    problem, eta = tiny_glister(1, m=60), 0.3
    chosen, gains = glister_greedy(*problem, k=8, eta=eta, rng=np.random.default_rng(0), eps=0.3)
    assert len(set(chosen.tolist())) == 8  # int(60 / 8 * ln(1 / 0.3)) = 9 candidates a step
    for t in range(8):
        ref = glister_reference_gains(*problem, list(chosen[:t]), eta, False)
        np.testing.assert_allclose(gains[t], ref[chosen[t]], rtol=1e-9)
    # a sample at least as large as what remains is the naive greedy
    naive = glister_greedy(*problem, k=8, eta=eta)
    full = glister_greedy(*problem, k=8, eta=eta, rng=np.random.default_rng(0), eps=1e-30)
    assert np.array_equal(naive[0], full[0])


def test_bad_arguments_raise_clear_value_errors():
    sim = np.ones((4, 4))
    atoms, target = np.eye(4), np.ones(4)
    problem = tiny_glister(0)
    with pytest.raises(ValueError, match=r"k=5: expected an integer between 1 and the number of samples \(4\)"):
        facility_location(sim, 5)
    with pytest.raises(ValueError, match="k=0"):
        facility_location(sim, 0)
    with pytest.raises(ValueError, match="k=5"):
        omp_nonneg(atoms, target, 5, 0.0)
    with pytest.raises(ValueError, match="k=0"):
        omp_nonneg(atoms, target, 0, 0.0)
    with pytest.raises(ValueError, match=r"lam=-0.1: expected a number >= 0"):
        omp_nonneg(atoms, target, 2, -0.1)
    with pytest.raises(ValueError, match="k=10"):
        glister_greedy(*problem, k=10, eta=0.1)
    with pytest.raises(ValueError, match="k=0"):
        glister_greedy(*problem, k=0, eta=0.1)
    with pytest.raises(ValueError, match="eta=0"):
        glister_greedy(*problem, k=2, eta=0)
    with pytest.raises(ValueError, match="square"):
        facility_location(np.ones((3, 4)), 1)
    with pytest.raises(ValueError, match="chosen"):
        representation_counts(sim, np.array([], dtype=np.int64))
