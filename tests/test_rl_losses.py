"""SAPO loss: parity with an independent float64 NumPy reference, gradients, and invariance.

* `token_logprobs` / `token_entropy` and `sapo_loss` (loss, token count, every metric) match
  a float64 NumPy implementation written here from the formulas, within 1e-6 (absolute on
  per-token means; 1e-5 relative where ratios reach exp(±50)).
* ``jax.grad`` of the mean loss w.r.t. ``logp`` matches the closed-form gradient and a
  central finite difference of the NumPy reference.
* Fully masked rows, garbage (inf/NaN) at masked positions and extreme ratios give finite
  loss and finite gradients, exactly zero at masked positions.
* Sharded == unsharded (loss, metrics, gradient) on 8 fake CPU devices for meshes
  (8,1,1), (2,2,2), (1,1,8), within 1e-6 relative + 1e-7 absolute; two micro-batches
  combined == one batch.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dreamr_jax.models.sharding import make_mesh
from dreamr_jax.rl import (
    finalize_metrics,
    merge_metrics,
    sapo_loss,
    sharded_sapo_loss,
    token_entropy,
    token_logprobs,
)

EPS, BETA = 0.2, 0.04


# --- independent float64 NumPy reference -------------------------------------------------


def np_log_softmax(logits):
    x = np.asarray(logits, np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def np_sapo(logp, old, ref, adv, mask, eps=EPS, beta=BETA, entropy=None):
    """Loss sum, token count and finalized metrics, on the unmasked tokens only."""
    m = np.asarray(mask, bool)
    lp = np.asarray(logp, np.float64)[m]
    lo = np.asarray(old, np.float64)[m]
    lr = np.asarray(ref, np.float64)[m]
    a = np.broadcast_to(np.asarray(adv, np.float64)[:, None], m.shape)[m]
    rho = np.exp(lp - lo)
    surrogate = np.minimum(rho * a, np.clip(rho, 1 - eps, 1 + eps) * a)
    k3 = np.exp(lr - lp) - (lr - lp) - 1
    n = int(m.sum())
    # Clipped = the clip zeroes this token's policy gradient (the PPO definition).
    clipped = ((a > 0) & (rho > 1 + eps)) | ((a < 0) & (rho < 1 - eps))
    metrics = {
        "clip_frac": clipped.mean() if n else 0.0,
        "ratio_mean": rho.mean() if n else 0.0,
        "ratio_min": rho.min() if n else 0.0,
        "ratio_max": rho.max() if n else 0.0,
        "kl": k3.mean() if n else 0.0,
        "tokens": n,
    }
    if entropy is not None:
        metrics["entropy"] = np.asarray(entropy, np.float64)[m].mean() if n else 0.0
    return -(surrogate - beta * k3).sum(), n, metrics


def np_grad(logp, old, ref, adv, mask, eps=EPS, beta=BETA):
    """Closed-form d(mean loss)/d logp (zero at masked positions)."""
    m = np.asarray(mask, bool)
    lp = np.where(m, np.asarray(logp, np.float64), 0)
    lo = np.where(m, np.asarray(old, np.float64), 0)
    lr = np.where(m, np.asarray(ref, np.float64), 0)
    a = np.asarray(adv, np.float64)[:, None]
    rho = np.exp(lp - lo)
    clipped = ((a > 0) & (rho > 1 + eps)) | ((a < 0) & (rho < 1 - eps))
    g = -np.where(clipped, 0.0, rho * a) + beta * (1 - np.exp(lr - lp))
    return np.where(m, g, 0.0) / max(int(m.sum()), 1)


# --- inputs ------------------------------------------------------------------------------


def make_batch(seed, b=16, t=12, spread=0.3, garbage=True):
    """Random float32 [b, t] arrays; rows 3 and 10 fully masked and filled with garbage."""
    rng = np.random.default_rng(seed)
    logp = -np.abs(rng.normal(0, 2, (b, t)))
    old = logp + rng.normal(0, spread, (b, t))
    ref = logp + rng.normal(0, 0.5, (b, t))
    adv = rng.normal(0, 1, b)
    lengths = rng.integers(1, t + 1, b)
    mask = np.arange(t)[None] < lengths[:, None]
    mask[[3, 10]] = False
    entropy = rng.uniform(0, 3, (b, t))
    if garbage:
        # Masked positions hold values that would poison an unguarded loss or gradient.
        for x, v in ((logp, np.nan), (old, -np.inf), (ref, np.inf)):
            x[~mask] = v
        logp[3] = np.inf
        adv[10] = np.nan
        entropy[~mask] = np.nan
    f32 = lambda x: jnp.asarray(x, jnp.float32)
    return dict(
        logp=f32(logp),
        old_logp=f32(old),
        ref_logp=f32(ref),
        advantages=f32(adv),
        mask=jnp.asarray(mask),
        entropy=f32(entropy),
    )


def np_args(batch):
    keys = ("logp", "old_logp", "ref_logp", "advantages", "mask")
    return [np.asarray(batch[k]) for k in keys]


def jax_mean_loss(batch, **kw):
    loss_sum, count, metrics = sapo_loss(**batch, clip_eps=EPS, kl_beta=BETA, **kw)
    return loss_sum / jnp.maximum(count, 1), (count, metrics)


def grad_logp(batch):
    def f(logp):
        return jax_mean_loss({**batch, "logp": logp})[0]

    return np.asarray(jax.grad(f)(batch["logp"]))


def assert_metrics_close(got, want, rtol=1e-6, atol=1e-7):
    assert set(got) == set(want)
    for k in want:
        np.testing.assert_allclose(np.asarray(got[k]), want[k], rtol=rtol, atol=atol, err_msg=k)


# --- token log-probabilities and entropy --------------------------------------------------


@pytest.mark.parametrize("offset", [0.0, 1e4])
def test_token_logprobs_and_entropy_match_numpy(offset):
    rng = np.random.default_rng(0)
    logits = (rng.normal(0, 3, (3, 5, 17)) + offset).astype(np.float32)
    targets = rng.integers(0, 17, (3, 5))
    logp = token_logprobs(jnp.asarray(logits), jnp.asarray(targets))
    ls = np_log_softmax(logits)
    want = np.take_along_axis(ls, targets[..., None], -1)[..., 0]
    assert logp.dtype == jnp.float32 and logp.shape == (3, 5)
    np.testing.assert_allclose(np.asarray(logp), want, atol=1e-6)
    ent = token_entropy(jnp.asarray(logits))
    np.testing.assert_allclose(np.asarray(ent), -(np.exp(ls) * ls).sum(-1), atol=1e-6)


def test_token_logprobs_bf16_input_and_gradient():
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 2, (2, 4, 9))
    targets = rng.integers(0, 9, (2, 4))
    got = token_logprobs(jnp.asarray(logits, jnp.bfloat16), jnp.asarray(targets))
    assert got.dtype == jnp.float32
    bf = np.asarray(jnp.asarray(logits, jnp.bfloat16).astype(jnp.float32))
    want = np.take_along_axis(np_log_softmax(bf), targets[..., None], -1)[..., 0]
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-6)
    # d sum(logp) / d logits = onehot - softmax.
    g = jax.grad(lambda x: token_logprobs(x, jnp.asarray(targets)).sum())(
        jnp.asarray(logits, jnp.float32)
    )
    onehot = np.eye(9)[targets]
    np.testing.assert_allclose(np.asarray(g), onehot - np.exp(np_log_softmax(logits)), atol=1e-6)


def test_entropy_with_minus_inf_logits_is_finite_with_finite_gradient():
    logits = jnp.asarray([[[0.0, 1.0, -jnp.inf, 2.0], [-jnp.inf, 3.0, -jnp.inf, -jnp.inf]]])
    ent = token_entropy(logits)
    p = np.exp(np_log_softmax(np.array([0.0, 1.0, 2.0])))
    np.testing.assert_allclose(np.asarray(ent), [[-(p * np.log(p)).sum(), 0.0]], atol=1e-6)
    g = jax.grad(lambda x: token_entropy(x).sum())(logits)
    assert np.isfinite(np.asarray(g)).all()


def test_token_logprobs_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"logits \[b, t, v\] and targets \[b, t\]"):
        token_logprobs(jnp.zeros((2, 3, 5)), jnp.zeros((2, 4), jnp.int32))


# --- sapo_loss parity ---------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sapo_loss_matches_numpy(seed):
    batch = make_batch(seed)
    loss, (count, metrics) = jax_mean_loss(batch)
    want_sum, want_n, want_metrics = np_sapo(*np_args(batch), entropy=batch["entropy"])
    assert int(count) == want_n
    assert np.isfinite(float(loss))
    np.testing.assert_allclose(float(loss), want_sum / want_n, atol=1e-6)
    assert_metrics_close(finalize_metrics(metrics, count), want_metrics)
    assert 0 < want_metrics["clip_frac"] < 1, "inputs should exercise both clip branches"


def test_sapo_loss_zero_advantages_leaves_only_kl():
    batch = make_batch(4, garbage=False)
    batch["advantages"] = jnp.zeros_like(batch["advantages"])
    loss, (count, metrics) = jax_mean_loss(batch)
    _, n, want = np_sapo(*np_args(batch))
    np.testing.assert_allclose(float(loss), BETA * want["kl"], atol=1e-7)
    assert float(metrics["clipped_sum"]) == 0.0


def test_fully_masked_rows_contribute_nothing():
    batch = make_batch(5)
    loss, (count, metrics) = jax_mean_loss(batch)
    keep = np.ones(16, bool)
    keep[[3, 10]] = False
    clean = {k: v[keep] for k, v in batch.items()}
    loss2, (count2, metrics2) = jax_mean_loss(clean)
    assert int(count) == int(count2)
    np.testing.assert_allclose(float(loss), float(loss2), rtol=1e-6)
    g = grad_logp(batch)
    assert np.isfinite(g).all()
    assert (g[~np.asarray(batch["mask"])] == 0).all()
    np.testing.assert_allclose(g[keep], grad_logp(clean), rtol=1e-6, atol=1e-9)


def test_all_masked_batch_gives_zero_loss_metrics_and_gradient():
    batch = make_batch(6)
    batch["mask"] = jnp.zeros_like(batch["mask"])
    loss, (count, metrics) = jax_mean_loss(batch)
    assert int(count) == 0 and float(loss) == 0.0
    final = finalize_metrics(metrics, count)
    assert all(float(v) == 0.0 for v in final.values())
    assert (grad_logp(batch) == 0).all()


@pytest.mark.parametrize("log_ratio", [50.0, -50.0])
def test_extreme_ratios_are_finite_and_match_numpy(log_ratio):
    batch = make_batch(7)
    mask = np.asarray(batch["mask"])
    # Every other unmasked token gets log ρ = ±50, with advantages of both signs.
    extreme = mask & (np.arange(12)[None] % 2 == 0)
    old = np.where(extreme, np.asarray(batch["logp"]) - log_ratio, batch["old_logp"])
    batch["old_logp"] = jnp.asarray(old, jnp.float32)
    loss, (count, metrics) = jax_mean_loss(batch)
    want_sum, n, want = np_sapo(*np_args(batch), entropy=batch["entropy"])
    assert np.isfinite(float(loss))
    # ρ = exp(50) amplifies float32 rounding of log ρ (1 ulp of 50 is 4e-6): 1e-5 relative.
    np.testing.assert_allclose(float(loss), want_sum / n, rtol=1e-5)
    assert_metrics_close(finalize_metrics(metrics, count), want, rtol=1e-5)
    g = grad_logp(batch)
    assert np.isfinite(g).all()
    np.testing.assert_allclose(g, np_grad(*np_args(batch)), rtol=1e-5, atol=1e-9)


def test_overflowing_ratios_with_zero_advantage_are_not_nan():
    # exp(200) overflows float32; with A = 0 an unguarded ρ A would be inf * 0 = NaN.
    batch = make_batch(8, garbage=False)
    batch["advantages"] = jnp.zeros_like(batch["advantages"])
    batch["old_logp"] = batch["logp"] - 200.0
    batch["ref_logp"] = batch["logp"] + 200.0
    loss, (count, metrics) = jax_mean_loss(batch)
    assert np.isfinite(float(loss))
    assert np.isfinite(grad_logp(batch)).all()
    assert all(np.isfinite(np.asarray(v)) for v in finalize_metrics(metrics, count).values())


# --- gradients ----------------------------------------------------------------------------


def test_gradient_matches_closed_form_and_finite_differences():
    batch = make_batch(9)
    g = grad_logp(batch)
    args = np_args(batch)
    np.testing.assert_allclose(g, np_grad(*args), rtol=1e-6, atol=1e-9)
    # Central differences of the float64 reference at tokens away from the clip kinks.
    logp, old, ref, adv, mask = args
    n = int(mask.sum())
    rho = np.exp(logp.astype(np.float64) - old)
    far = mask & (np.abs(rho - (1 - EPS)) > 1e-3) & (np.abs(rho - (1 + EPS)) > 1e-3)
    h = 1e-6
    for i, j in list(zip(*np.nonzero(far), strict=True))[:25]:
        up, down = logp.astype(np.float64), logp.astype(np.float64)
        up[i, j] += h
        down[i, j] -= h
        fd = (np_sapo(up, old, ref, adv, mask)[0] - np_sapo(down, old, ref, adv, mask)[0]) / (
            2 * h * n
        )
        np.testing.assert_allclose(g[i, j], fd, rtol=1e-5, atol=1e-8, err_msg=f"{(i, j)}")


def test_only_logp_receives_gradients():
    batch = make_batch(10, garbage=False)

    def f(old, ref, adv):
        return jax_mean_loss({**batch, "old_logp": old, "ref_logp": ref, "advantages": adv})[0]

    grads = jax.grad(f, argnums=(0, 1, 2))(
        batch["old_logp"], batch["ref_logp"], batch["advantages"]
    )
    assert all((np.asarray(x) == 0).all() for x in grads)


# --- bad input ----------------------------------------------------------------------------


def test_sapo_loss_rejects_bad_input():
    batch = make_batch(11)
    with pytest.raises(ValueError, match="advantages must be \\[b\\]"):
        sapo_loss(**{**batch, "advantages": batch["advantages"][:, None]}, clip_eps=EPS, kl_beta=0)
    with pytest.raises(ValueError, match="token arrays of one shape"):
        sapo_loss(**{**batch, "mask": batch["mask"][:, :5]}, clip_eps=EPS, kl_beta=BETA)
    with pytest.raises(ValueError, match="clip_eps"):
        sapo_loss(**batch, clip_eps=1.5, kl_beta=BETA)
    with pytest.raises(ValueError, match="kl_beta"):
        sapo_loss(**batch, clip_eps=EPS, kl_beta=-0.1)


# --- sharding and accumulation invariance -------------------------------------------------


@pytest.mark.parametrize("shape", [(8, 1, 1), (2, 2, 2), (1, 1, 8)])
def test_sharded_equals_unsharded(shape):
    mesh = make_mesh(shape)
    batch = make_batch(12)
    loss, (count, metrics) = jax_mean_loss(batch)
    want = finalize_metrics(metrics, count)

    def sharded(logp):
        args = {**batch, "logp": logp}
        return sharded_sapo_loss(mesh, **args, clip_eps=EPS, kl_beta=BETA)

    got_loss, got = jax.jit(sharded)(batch["logp"])
    np.testing.assert_allclose(float(got_loss), float(loss), rtol=1e-6, atol=1e-7)
    assert_metrics_close(got, {k: np.asarray(v) for k, v in want.items()})
    g = jax.jit(jax.grad(lambda x: sharded(x)[0]))(batch["logp"])
    np.testing.assert_allclose(np.asarray(g), grad_logp(batch), rtol=1e-6, atol=1e-9)


def test_sharded_rejects_indivisible_batch():
    batch = make_batch(13, b=12)
    with pytest.raises(ValueError, match="does not split evenly"):
        sharded_sapo_loss(make_mesh((8, 1, 1)), **batch, clip_eps=EPS, kl_beta=BETA)


def test_micro_batches_combine_to_the_full_batch():
    batch = make_batch(14)
    loss, (count, metrics) = jax_mean_loss(batch)
    parts = [
        sapo_loss(**{k: v[s] for k, v in batch.items()}, clip_eps=EPS, kl_beta=BETA)
        for s in (slice(0, 5), slice(5, 16))
    ]
    total = parts[0][0] + parts[1][0]
    n = parts[0][1] + parts[1][1]
    assert int(n) == int(count)
    np.testing.assert_allclose(float(total / n), float(loss), rtol=1e-6, atol=1e-7)
    merged = finalize_metrics(merge_metrics(parts[0][2], parts[1][2]), n)
    assert_metrics_close(
        merged, {k: np.asarray(v) for k, v in finalize_metrics(metrics, count).items()}
    )


def test_sharded_all_masked_batch_is_zero_not_nan():
    batch = make_batch(15)
    batch["mask"] = jnp.zeros_like(batch["mask"])
    loss, metrics = sharded_sapo_loss(make_mesh((2, 2, 2)), **batch, clip_eps=EPS, kl_beta=BETA)
    assert float(loss) == 0.0
    assert all(float(v) == 0.0 for v in metrics.values())
