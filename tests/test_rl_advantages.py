"""Group-normalised advantages against a float64 NumPy reference (within 1e-6), edge cases
(equal rewards, G = 1) and rank errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dreamr_jax.rl import group_advantages


def np_advantages(r, eps=1e-6):
    r = np.asarray(r, np.float64)
    mu = r.sum(-1, keepdims=True) / r.shape[-1]
    sigma = np.sqrt(((r - mu) ** 2).sum(-1, keepdims=True) / r.shape[-1])  # ddof 0
    return (r - mu) / (sigma + eps)


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_numpy(seed):
    rng = np.random.default_rng(seed)
    # Rewards shaped like SAPO's: 0/1 outcome + fraction - length penalty.
    r = rng.integers(0, 2, (6, 8)) + rng.uniform(0, 1, (6, 8)) - rng.uniform(0, 1, (6, 8))
    got = group_advantages(jnp.asarray(r, jnp.float32))
    assert got.shape == (6, 8) and got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got), np_advantages(r.astype(np.float32)), atol=1e-6)
    # Standardised per group: mean 0, population std ~1.
    np.testing.assert_allclose(np.asarray(got).mean(-1), 0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(got).std(-1), 1, atol=1e-5)


def test_equal_rewards_and_single_rollout_give_zero_advantage():
    r = jnp.asarray([[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0.5, 0.5]])
    assert (np.asarray(group_advantages(r)) == 0).all()
    assert (np.asarray(group_advantages(jnp.asarray([[3.0], [-2.0]]))) == 0).all()


def test_groups_are_independent_and_jittable():
    r = jnp.asarray([[0.0, 1.0], [10.0, 30.0]])
    got = np.asarray(jax.jit(group_advantages)(r))
    np.testing.assert_allclose(got, [[-1, 1], [-1, 1]], atol=1e-5)


@pytest.mark.parametrize("shape", [(8,), (2, 4, 2), ()])
def test_rejects_wrong_rank(shape):
    with pytest.raises(ValueError, match=r"\[prompts, G\] \(rank 2"):
        group_advantages(jnp.zeros(shape))


def test_rejects_non_positive_eps():
    with pytest.raises(ValueError, match="eps"):
        group_advantages(jnp.zeros((2, 4)), eps=0.0)
