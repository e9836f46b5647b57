"""Influence functions with the explicit damped Gauss-Newton matrix, against brute-force
autograd (the GGN from full Jacobians, the Hessian where the model is linear in θ), and the
stage that writes them into the attribution table."""
import numpy as np
import pytest
import torch
from torch import nn

from ntkbench.attribution.influence import gauss_newton, influence_scores, parameter_count


def _net(hidden, classes):
    torch.manual_seed(0)
    layers, d = [], 4
    for h in hidden:
        layers += [nn.Linear(d, h), nn.Tanh()]
        d = h
    return nn.Sequential(*layers, nn.Linear(d, classes)).double()


def _flat(net):
    names = [n for n, _ in net.named_parameters()]
    shapes = [p.shape for _, p in net.named_parameters()]

    def unflat(v):
        out, i = {}, 0
        for n, s in zip(names, shapes):
            k = int(np.prod(s))
            out[n] = v[i:i + k].reshape(s)
            i += k
        return out
    return torch.cat([p.detach().reshape(-1) for p in net.parameters()]), unflat


def _loss(z, y):
    return nn.functional.binary_cross_entropy_with_logits(z[:, 0], y.double()) if z.shape[1] == 1 \
        else nn.functional.cross_entropy(z, y)


@pytest.mark.parametrize("hidden,classes", [([], 3), ([], 1), ([5], 3)])
def test_gauss_newton_and_scores_match_brute_force(hidden, classes):
    net = _net(hidden, classes)
    x = torch.randn(20, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, max(classes, 2), (20,), generator=torch.Generator().manual_seed(2))
    flat, unflat = _flat(net)

    def logits(v, xs=x):
        return torch.func.functional_call(net, unflat(v), (xs,))
    J = torch.autograd.functional.jacobian(logits, flat)  # (N, C, P)
    z = logits(flat).detach()
    G = 0
    for i in range(len(x)):
        if classes == 1:
            p = torch.sigmoid(z[i])
            A = (p * (1 - p)).diag()
        else:
            p = torch.softmax(z[i], 0)
            A = torch.diag(p) - torch.outer(p, p)
        G = G + J[i].T @ A @ J[i]
    G = (G / len(x)).numpy()
    H = gauss_newton(net, x, batch_size=7)  # batches of 7: the sum runs over uneven batches
    np.testing.assert_allclose(H, G, rtol=0, atol=1e-13 * np.abs(G).max())
    if not hidden:  # logits linear in θ: the GGN is the Hessian of the mean loss
        hess = torch.autograd.functional.hessian(lambda v: _loss(logits(v), y), flat).numpy()
        np.testing.assert_allclose(H, hess, rtol=0, atol=1e-13 * np.abs(hess).max())

    def grads(xs, ys):
        return np.stack([torch.autograd.functional.jacobian(lambda v: _loss(logits(v, xs[i:i + 1]), ys[i:i + 1]), flat)
                         .numpy() for i in range(len(xs))])
    g_test, g_train = grads(x[:5], y[:5]), grads(x, y)
    both = influence_scores(net, x[:5], y[:5], x, y, [0.1, 1.0], batch_size=7)
    for lam, scores in both.items():
        ref = g_test @ np.linalg.solve(G + lam * np.eye(len(G)), g_train.T)
        np.testing.assert_allclose(scores, ref, rtol=0, atol=1e-12 * np.abs(ref).max())
    np.testing.assert_array_equal(influence_scores(net, x[:5], y[:5], x, y, 0.1, batch_size=7), both[0.1])


def test_influence_sign_and_limits():
    """τ(x_i, x_i) > 0 (a point supports itself); a huge damping gives Grad-Dot / λ; too
    many parameters or a singular GGN without damping are refused with a clear message."""
    net = _net([], 3)
    x = torch.randn(30, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    y = torch.randint(0, 3, (30,), generator=torch.Generator().manual_seed(4))
    self_inf = np.diag(influence_scores(net, x, y, x, y, 1e-3))
    assert (self_inf > 0).all()
    lam = 1e8
    g = torch.stack([torch.cat([t.flatten() for t in torch.autograd.grad(_loss(net(xi[None]), yi[None]),
                                                                          list(net.parameters()))])
                     for xi, yi in zip(x, y)]).detach().numpy()
    np.testing.assert_allclose(influence_scores(net, x, y, x, y, lam) * lam, g @ g.T, rtol=1e-5)
    assert parameter_count(net) == 15
    with pytest.raises(ValueError, match="15 parameters .* max_params is 10"):
        gauss_newton(net, x, max_params=10)
    with pytest.raises(ValueError, match="not positive definite"):  # 2 points, 15 parameters: rank ≤ 4
        influence_scores(net, x[:2], y[:2], x[:2], y[:2], 0.0)
    with pytest.raises(ValueError, match="damping must be"):
        influence_scores(net, x, y, x, y, -1.0)
