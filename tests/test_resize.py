"""Resizing a low-rank pair and the simplex projection (rank-schedule building blocks)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize

from lorakit.ops.resize import grow, resize_pair, shrink
from lorakit.ops.simplex import project_simplex


def pair(out_features=40, in_features=30, rank=6, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(out_features, rank, generator=generator),
            torch.randn(rank, in_features, generator=generator))


@pytest.mark.parametrize("new_rank", [6, 7, 12, 30])
def test_grow_keeps_the_product_and_new_directions_get_gradient(new_rank):
    B, A = pair()
    B2, A2 = grow(B, A, new_rank, torch.Generator().manual_seed(1))
    assert B2.shape == (40, new_rank) and A2.shape == (new_rank, 30)
    torch.testing.assert_close(B2 @ A2, B @ A, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(B2.T @ B2, torch.eye(new_rank), atol=1e-5, rtol=0)  # orthonormal columns
    if new_rank > 6:
        A2 = A2.clone().requires_grad_(True)
        target = torch.randn(40, 30, generator=torch.Generator().manual_seed(2))
        ((B2 @ A2 - target) ** 2).sum().backward()
        assert A2.grad[6:].abs().sum() > 1e-3  # the added rows learn


@pytest.mark.parametrize("new_rank", [1, 3, 6])
def test_shrink_is_the_truncated_svd_of_the_product(new_rank):
    B, A = pair()
    B2, A2 = shrink(B, A, new_rank)
    U, S, Vh = torch.linalg.svd(B @ A)
    best = (U[:, :new_rank] * S[:new_rank]) @ Vh[:new_rank]
    torch.testing.assert_close(B2 @ A2, best, atol=1e-3, rtol=1e-4)
    # balanced factors: B and Aᵀ carry the same singular values
    torch.testing.assert_close(torch.linalg.svdvals(B2), torch.linalg.svdvals(A2), atol=1e-4, rtol=1e-4)


def test_resize_pair_dispatches_and_zero_removes():
    B, A = pair()
    assert resize_pair(B, A, 0) is None
    assert resize_pair(B, A, 3)[0].shape == (40, 3)
    assert resize_pair(B, A, 9)[0].shape == (40, 9)
    with pytest.raises(ValueError):
        grow(B, A, 31)


vectors = st.lists(st.floats(-10, 10, allow_nan=False, width=32), min_size=1, max_size=12)


@settings(max_examples=200, deadline=None)
@given(vectors)
def test_simplex_projection_lies_on_the_simplex_and_is_idempotent(values):
    v = torch.tensor(values, dtype=torch.float64)
    w = project_simplex(v)
    assert (w >= 0).all()
    assert float(w.sum()) == pytest.approx(1.0, abs=1e-9)
    torch.testing.assert_close(project_simplex(w), w, atol=1e-12, rtol=0)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-3, 3, allow_nan=False, width=32), min_size=2, max_size=6))
def test_simplex_projection_matches_a_brute_force_qp(values):
    v = np.array(values, dtype=np.float64)
    result = minimize(lambda w: ((w - v) ** 2).sum(), np.full(len(v), 1 / len(v)), jac=lambda w: 2 * (w - v),
                      bounds=[(0, None)] * len(v), constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1}],
                      method="SLSQP", options={"ftol": 1e-14, "maxiter": 500})
    ours = project_simplex(torch.tensor(v)).numpy()
    assert ((ours - v) ** 2).sum() <= result.fun + 1e-9  # never worse than the QP solver
    np.testing.assert_allclose(ours, result.x, atol=1e-5)


def test_simplex_projection_of_a_simplex_point_and_of_a_shift():
    w = torch.tensor([0.2, 0.3, 0.5])
    torch.testing.assert_close(project_simplex(w), w)
    torch.testing.assert_close(project_simplex(w + 7.0), w)  # invariant to adding a constant
