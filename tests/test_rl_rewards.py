"""SAPO reward R = w1 R_outcome + w2 R_draft + w3 R_length: terms, weights, the length
penalty's shape, R_draft from step counts, and config validation errors."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dreamr_jax.rl import RewardConfig, accepted_fraction, length_penalty, rewards


def test_default_config_is_the_papers_weights_and_validates():
    cfg = RewardConfig().validate()
    assert (cfg.w_outcome, cfg.w_draft, cfg.w_length) == (1.0, 1.0, 1.0)
    assert 0 <= cfg.length_free < cfg.length_max
    hash(cfg)  # a jit static argument


def test_length_penalty_shape():
    cfg = RewardConfig(length_free=100, length_max=300)
    lengths = jnp.asarray([0, 50, 100, 150, 200, 299, 300, 1000])
    got = np.asarray(length_penalty(lengths, cfg))
    np.testing.assert_allclose(got, [0, 0, 0, -0.25, -0.5, -0.995, -1, -1], atol=1e-7)


def test_terms_and_weights():
    cfg = RewardConfig(w_outcome=2.0, w_draft=0.5, w_length=3.0, length_free=10, length_max=30)
    correct = jnp.asarray([True, False, True, False])
    frac = jnp.asarray([1.0, 0.25, 0.0, 0.5])
    lengths = jnp.asarray([5, 20, 40, 10])
    total, terms = rewards(correct, frac, lengths, cfg)
    np.testing.assert_allclose(np.asarray(terms["outcome"]), [1, 0, 1, 0])
    np.testing.assert_allclose(np.asarray(terms["draft"]), [1, 0.25, 0, 0.5])
    np.testing.assert_allclose(np.asarray(terms["length"]), [0, -0.5, -1, 0])
    want = [2 * 1 + 0.5 * 1 + 0, 0.5 * 0.25 - 3 * 0.5, 2 - 3, 0.5 * 0.5]
    np.testing.assert_allclose(np.asarray(total), want, atol=1e-6)
    assert total.dtype == jnp.float32 and total.shape == (4,)


def test_single_term_weights_isolate_each_term():
    correct, frac, lengths = jnp.asarray([1, 0]), jnp.asarray([0.3, 0.9]), jnp.asarray([1, 9000])
    for field, term in (("w_outcome", "outcome"), ("w_draft", "draft"), ("w_length", "length")):
        weights = {"w_outcome": 0.0, "w_draft": 0.0, "w_length": 0.0, field: 1.0}
        total, terms = rewards(correct, frac, lengths, RewardConfig(**weights))
        np.testing.assert_allclose(np.asarray(total), np.asarray(terms[term]), err_msg=field)


def test_draft_credit_can_require_a_final_answer():
    correct, frac, lengths = jnp.asarray([0, 1, 0]), jnp.asarray([1.0, 0.5, 0.25]), jnp.ones(3)
    answered = jnp.asarray([False, True, True])
    off, _ = rewards(correct, frac, lengths, RewardConfig(), answered_b=answered)
    np.testing.assert_allclose(np.asarray(off), [1.0, 1.5, 0.25])  # the paper's form
    cfg = RewardConfig(draft_needs_answer=True)
    total, terms = rewards(correct, frac, lengths, cfg, answered_b=answered)
    np.testing.assert_allclose(np.asarray(terms["draft"]), [0.0, 0.5, 0.25])
    np.testing.assert_allclose(np.asarray(total), [0.0, 1.5, 0.25])
    with pytest.raises(ValueError, match="needs answered_b"):
        rewards(correct, frac, lengths, cfg)
    with pytest.raises(ValueError, match=r"\[b\] arrays of one shape"):
        rewards(correct, frac, lengths, cfg, answered_b=jnp.ones(2, bool))


def test_rewards_jit_with_static_config():
    cfg = RewardConfig(length_free=0, length_max=4)
    f = jax.jit(lambda c, a, n: rewards(c, a, n, cfg)[0])
    got = f(jnp.asarray([1, 0]), jnp.asarray([0.5, 1.0]), jnp.asarray([2, 8]))
    np.testing.assert_allclose(np.asarray(got), [1 + 0.5 - 0.5, 0 + 1 - 1], atol=1e-6)


def test_accepted_fraction():
    got = accepted_fraction(jnp.asarray([3, 0, 0, 5]), jnp.asarray([4, 2, 0, 5]))
    np.testing.assert_allclose(np.asarray(got), [0.75, 0, 0, 1])


def test_rewards_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"\[b\] arrays of one shape"):
        rewards(jnp.ones(3), jnp.ones(4), jnp.ones(3), RewardConfig())
    with pytest.raises(ValueError, match=r"\[b\] arrays of one shape"):
        rewards(jnp.ones((2, 3)), jnp.ones((2, 3)), jnp.ones((2, 3)), RewardConfig())


@pytest.mark.parametrize(
    "change, match",
    [
        ({"w_outcome": -1.0}, "w_outcome=-1.0 must be a finite number >= 0"),
        ({"w_draft": float("nan")}, "w_draft=nan must be a finite number"),
        ({"w_length": float("inf")}, "w_length=inf must be a finite number"),
        ({"w_outcome": 0.0, "w_draft": 0.0, "w_length": 0.0}, "all 0"),
        ({"length_free": -1}, "length_free=-1 must be an integer"),
        ({"length_max": 10.5}, "length_max=10.5 must be an integer"),
        ({"length_free": 500, "length_max": 500}, "length_max=500 must be > length_free=500"),
        ({"draft_needs_answer": 1}, "draft_needs_answer=1 must be True or False"),
    ],
)
def test_config_validation_errors(change, match):
    cfg = dataclasses.replace(RewardConfig(), **change)
    with pytest.raises(ValueError, match=match):
        cfg.validate()
    with pytest.raises(ValueError, match=match):
        rewards(jnp.ones(2), jnp.ones(2), jnp.ones(2), cfg)
