"""`attn_jax.dot_product_attention` at the edges where implementations once disagreed or failed.

Each case runs on every implementation: numerical debugging flags (`jax_debug_infs`), score mods
that leave a whole row at ``-inf``, mods of any broadcastable shape (a 0-d `noop_mask`
included), the chunked kernel in bfloat16 under ``vmap(grad)``, and the chunked kernel's cache of
compiled programs (a mod that reads changed Python state is never stale; an identical fresh
closure never recompiles).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attn_jax
from attn_jax.core import chunked, mods

IMPLEMENTATIONS = (None, "reference", "xla", "chunked")


def _draw(*shape, seed=0, dtype=jnp.float32):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), dtype)


def _attention(implementation, **kwargs):
  return functools.partial(attn_jax.dot_product_attention, implementation=implementation,
                           **kwargs)


# ----------------------------------------------------------------------------- jax_debug_infs


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS, ids=str)
def test_masked_call_passes_jax_debug_infs(implementation):
  query, key = _draw(5, 6, 11), _draw(7, 3, 11, seed=1)
  mask = jnp.arange(7) <= 3
  attention = _attention(implementation, mask=mask)
  with jax.debug_infs(True):
    out = attention(query, key, key)
    grads = jax.grad(lambda q, k: jnp.sum(attention(q, k, k) ** 2), argnums=(0, 1))(query, key)
  np.testing.assert_allclose(out, jax.nn.dot_product_attention(query, key, key, mask=mask),
                             atol=1e-5)
  assert all(np.all(np.isfinite(g)) for g in grads)


# ----------------------------------------------------------------------------- rows at -inf


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS, ids=str)
def test_score_mod_setting_whole_rows_to_minus_inf_gives_zeros(implementation):
  # T > S: queries q_idx >= S have no key with q_idx <= kv_idx; every logit of theirs is -inf.
  query, key, value = _draw(2, 9, 2, 4), _draw(2, 5, 2, 4, seed=1), _draw(2, 5, 2, 4, seed=2)
  mod = lambda s, b, h, q_idx, kv_idx: jnp.where(q_idx <= kv_idx, s, -jnp.inf)
  attention = _attention(implementation, score_mod=mod)
  out = attention(query, key, value)
  np.testing.assert_array_equal(out[:, 5:], 0.0)
  twin = jax.nn.dot_product_attention(query, key, value,
                                      mask=jnp.arange(9)[:, None] <= jnp.arange(5)[None, :])
  np.testing.assert_allclose(out[:, :5], twin[:, :5], atol=1e-5)
  grads = jax.grad(lambda *a: jnp.sum(jnp.sin(attention(*a))), argnums=(0, 1, 2))(
      query, key, value)
  assert all(np.all(np.isfinite(g)) for g in grads)
  np.testing.assert_array_equal(grads[0][:, 5:], 0.0)


# ----------------------------------------------------------------------------- mod shapes


MASK_MODS = {  # name -> (mask_mod, the dense mask [T, S] it means)
    "noop_0d": (lambda b, h, q, kv: jnp.ones((), bool), np.ones((6, 5), bool)),
    "python_bool_0d": (lambda b, h, q, kv: jnp.asarray(True), np.ones((6, 5), bool)),
    "keys_only_[S]": (lambda b, h, q, kv: jnp.arange(5) <= 3, np.arange(5)[None] <= 3),
    "table_[T,S]": (lambda b, h, q, kv: jnp.asarray(np.tri(6, 5, dtype=bool)), np.tri(6, 5) > 0),
}
SCORE_MODS = {  # name -> (score_mod, the dense logits it turns logits [B, N, T, S] into)
    "constant_0d": (lambda s, b, h, q, kv: jnp.float32(1.0), lambda s: jnp.ones_like(s)),
    "per_key_[S]": (lambda s, b, h, q, kv: s + jnp.arange(5.0), lambda s: s + jnp.arange(5.0)),
}


# The chunked path traces a mask mod as a program of four scalar indices (its block mask), so it
# takes the elementwise ones (constants included); the dense paths take any broadcastable shape.
ELEMENTWISE = ("noop_0d", "python_bool_0d")
MASK_MOD_CASES = [(i, n) for i in IMPLEMENTATIONS for n in MASK_MODS
                  if n in ELEMENTWISE or i in ("reference", "xla")]


@pytest.mark.parametrize(("implementation", "name"), MASK_MOD_CASES, ids=str)
def test_mask_mods_of_any_broadcastable_shape(implementation, name):
  query, key = _draw(2, 6, 4, 8), _draw(2, 5, 2, 8, seed=1)
  mask_mod, dense = MASK_MODS[name]
  out = _attention(implementation, mask_mod=mask_mod)(query, key, key)
  np.testing.assert_allclose(out, jax.nn.dot_product_attention(query, key, key, mask=dense),
                             atol=1e-5)


@pytest.mark.parametrize("name", list(SCORE_MODS))
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS, ids=str)
def test_score_mods_of_any_broadcastable_shape(implementation, name):
  query, key = _draw(2, 6, 4, 8), _draw(2, 5, 2, 8, seed=1)
  score_mod, dense = SCORE_MODS[name]
  out = _attention(implementation, score_mod=score_mod)(query, key, key)
  logits = jnp.einsum("btnh,bsnh->bnts", query, jnp.repeat(key, 2, axis=2)) / np.sqrt(8)
  weights = jax.nn.softmax(dense(logits), axis=-1)
  want = jnp.einsum("bnts,bsnh->btnh", weights, jnp.repeat(key, 2, axis=2))
  np.testing.assert_allclose(out, want, atol=1e-5)


# ----------------------------------------------------------------------------- bf16 under vmap


def test_chunked_bfloat16_backward_under_vmap():
  x = _draw(2, 64, 4, 64, dtype=jnp.bfloat16)

  def grad_v(implementation):
    loss = lambda q, k, v: _attention(implementation)(q, k, v).astype(jnp.float32).sum()
    return jax.vmap(jax.grad(loss, argnums=2), in_axes=(0, None, None))

  got = grad_v("chunked")(x, x[0], x[0])
  want = grad_v("xla")(x, x[0], x[0])
  np.testing.assert_allclose(got.astype(jnp.float32), want.astype(jnp.float32), atol=2e-2)
  if jax.default_backend() == "cpu":
    # XLA:CPU has no BF16 x BF16 = F32 dot: the kernel must not ask for one there.
    hlo = jax.jit(grad_v("chunked")).lower(x, x[0], x[0]).as_text()
    dots = [line for line in hlo.splitlines() if "dot_general" in line]
    assert dots and not [d for d in dots if "bf16>" in d.split(":")[-1].split("->")[0]]


# ----------------------------------------------------------------------------- kernel cache


def test_chunked_sees_the_python_state_a_mod_reads_at_each_call():
  query = _draw(1, 8, 2, 4)
  flag = {"sharp": False}
  score_mod = lambda s, b, h, q, kv: s * 3.0 if flag["sharp"] else s
  keep = {"all": True}
  mask_mod = lambda b, h, q, kv: (kv <= q) | keep["all"]
  for sharp, everything in ((False, True), (True, True), (True, False)):
    flag["sharp"], keep["all"] = sharp, everything
    got = _attention("chunked", score_mod=score_mod, mask_mod=mask_mod)(query, query, query)
    want = _attention("xla", score_mod=score_mod, mask_mod=mask_mod)(query, query, query)
    np.testing.assert_allclose(got, want, atol=1e-5, err_msg=f"{sharp=}, {everything=}")


def test_chunked_fresh_identical_closures_reuse_one_program_and_new_values_are_seen():
  query = _draw(1, 16, 2, 4)
  ids = jnp.asarray([[0] * 5 + [1] * 11], jnp.int32)
  slopes = jnp.asarray([0.5, 0.25])
  call = lambda mask_mod, score_mod: _attention(
      "chunked", mask_mod=mask_mod, score_mod=score_mod)(query, query, query)
  call(mods.document(ids), mods.alibi(slopes))
  before = chunked._attend._cache_size()
  for _ in range(2):  # fresh closures over the same arrays, and over equal copies
    call(mods.document(ids), mods.alibi(slopes))
    call(mods.document(jnp.array(ids)), mods.alibi(jnp.array(slopes)))
  # New slopes (a closed-over array passed as an argument): same program, new numbers.
  new_slopes = jnp.asarray([2.0, 0.0])
  got = call(mods.document(ids), mods.alibi(new_slopes))
  assert chunked._attend._cache_size() == before
  want = _attention("xla", mask_mod=mods.document(ids), score_mod=mods.alibi(new_slopes))(
      query, query, query)
  np.testing.assert_allclose(got, want, atol=1e-5)
  # New segment ids (planned at trace time, so part of the program): new numbers too.
  other = jnp.asarray([[0] * 9 + [1] * 7], jnp.int32)
  got = call(mods.document(other), mods.alibi(slopes))
  want = _attention("xla", mask_mod=mods.document(other), score_mod=mods.alibi(slopes))(
      query, query, query)
  np.testing.assert_allclose(got, want, atol=1e-5)
  # A numpy array converted inside the mod is baked in by value: never stale either.
  for table in (np.array([0.5, 0.25], np.float32), np.array([3.0, 1.0], np.float32)):
    score_mod = lambda s, b, h, q, kv, table=table: s - jnp.asarray(table)[h] * jnp.abs(q - kv)
    got = call(None, score_mod)
    want = _attention("xla", score_mod=score_mod)(query, query, query)
    np.testing.assert_allclose(got, want, atol=1e-5)
