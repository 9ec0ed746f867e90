"""Tests for `attn_jax.dot_product_attention` / `attention_weights`: the batched entry point.

Checked three ways: against `jax.nn.dot_product_attention(implementation="xla")` on every query row
that can attend a key, against numpy written out here (cosine score, weights), and between paths
(reference == xla, is_causal == explicit mask, jit == eager). Then the guarantees jax.nn lacks:
fully masked rows give zeros, gradients stay finite, and garbage at masked positions leaks nowhere.

Speed: calls are eager and most cases share one set of shapes, so the per-primitive compilations
are cached across cases; jit is used only where jit itself is under test.
"""

import dataclasses
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads

import attn_jax
from attn_jax import attention as attention_module

# The implementations every parametrized test runs. "cudnn" needs a GPU (see the dedicated tests).
IMPLEMENTATIONS_UNDER_TEST = (None, "reference", "xla", "chunked")

B, T, S, N, K, H = 2, 3, 5, 4, 2, 4  # the shapes most cases share (grouped-query: N = 2K)


@dataclasses.dataclass(frozen=True)
class Case:
  """One configuration of `dot_product_attention`'s arguments, with random float inputs."""

  id: str
  batch: int | None = B
  q_len: int = T
  kv_len: int = S
  num_heads: int = N
  num_kv_heads: int = K
  mask_shape: tuple[int, ...] | None = None
  bias_shape: tuple[int, ...] | None = None
  is_causal: bool = False
  query_seq_lengths: tuple[int, ...] | None = None
  key_value_seq_lengths: tuple[int, ...] | None = None
  local_window_size: int | tuple[int, int] | None = None

  def arrays(self, dtype=jnp.float32):
    """(query, key, value, bias, mask) for this case; bias and mask may be None."""
    rng = np.random.default_rng(0)
    lead = () if self.batch is None else (self.batch,)
    qkv = [rng.standard_normal((*lead, length, heads, H)) for length, heads in
           [(self.q_len, self.num_heads), (self.kv_len, self.num_kv_heads),
            (self.kv_len, self.num_kv_heads)]]
    bias = None if self.bias_shape is None else rng.standard_normal(self.bias_shape)
    mask = None
    if self.mask_shape is not None:
      mask = rng.random(self.mask_shape) < 0.6
      if len(self.mask_shape) >= 2 and self.mask_shape[-2] > 1:
        mask.reshape(-1, *self.mask_shape[-2:])[0, 1] = False  # a fully masked query row
    query, key, value = (jnp.asarray(x, dtype) for x in qkv)
    return query, key, value, None if bias is None else jnp.asarray(bias, dtype), (
        None if mask is None else jnp.asarray(mask))

  def kwargs(self):
    lengths = lambda x: None if x is None else jnp.asarray(x, jnp.int32)
    return dict(is_causal=self.is_causal, local_window_size=self.local_window_size,
                query_seq_lengths=lengths(self.query_seq_lengths),
                key_value_seq_lengths=lengths(self.key_value_seq_lengths))

  def allowed(self) -> np.ndarray:
    """bool [B, N, T, S] ([N, T, S] unbatched): may query t attend key s. Plain numpy."""
    batch = 1 if self.batch is None else self.batch
    t = np.arange(self.q_len)[:, None]
    s = np.arange(self.kv_len)[None, :]
    allowed = np.ones((batch, self.num_heads, self.q_len, self.kv_len), bool)
    mask = self.arrays()[4]
    if mask is not None:
      allowed &= np.asarray(mask)
    if self.is_causal:
      allowed &= s <= t
    if self.local_window_size is not None:
      left, right = ((self.local_window_size,) * 2 if isinstance(self.local_window_size, int)
                     else self.local_window_size)
      allowed &= (s >= t - left) & (s <= t + right)
    if self.query_seq_lengths is not None:
      allowed &= t < np.asarray(self.query_seq_lengths)[:, None, None, None]
    if self.key_value_seq_lengths is not None:
      allowed &= s < np.asarray(self.key_value_seq_lengths)[:, None, None, None]
    return allowed[0] if self.batch is None else allowed

  def rows_ok(self) -> np.ndarray:
    """bool [B, T, N] ([T, N]): the query rows that may attend at least one key."""
    return np.swapaxes(self.allowed().any(-1), -1, -2)


CASES = [
    Case("gqa"),
    Case("mha", num_heads=2, num_kv_heads=2),
    Case("unbatched", batch=None),
    Case("unbatched_mask_bias_causal", batch=None, mask_shape=(N, T, S), bias_shape=(T, S),
         is_causal=True),
    Case("causal", is_causal=True),
    Case("causal_q_longer", q_len=5, kv_len=3, is_causal=True),
    Case("mask_BNTS", mask_shape=(B, N, T, S)),
    Case("mask_11TS", mask_shape=(1, 1, T, S)),
    Case("mask_B11S", mask_shape=(B, 1, 1, S)),
    Case("mask_B1T1", mask_shape=(B, 1, T, 1)),
    Case("mask_TS", mask_shape=(T, S)),
    Case("bias_BNTS", bias_shape=(B, N, T, S)),
    Case("bias_1N1S", bias_shape=(1, N, 1, S)),
    Case("bias_mask", bias_shape=(B, N, T, S), mask_shape=(1, N, T, S)),
    Case("query_lengths", query_seq_lengths=(1, 3)),
    Case("kv_lengths", key_value_seq_lengths=(5, 2)),
    Case("both_lengths_one_empty", query_seq_lengths=(2, 3), key_value_seq_lengths=(4, 0)),
    Case("window_int", local_window_size=1),
    Case("window_left", local_window_size=(2, 0)),
    Case("window_right", local_window_size=(0, 1)),
    Case("everything", mask_shape=(B, 1, 1, S), bias_shape=(B, N, T, S), is_causal=True,
         query_seq_lengths=(3, 2), key_value_seq_lengths=(5, 4), local_window_size=(1, 0)),
]
EVERYTHING = next(c for c in CASES if c.id == "everything")
BF16_CASES = [c for c in CASES if c.id in ("gqa", "bias_mask", "everything")]
# "chunked" compiles its block loops afresh per configuration, and tests/core/test_chunked.py sweeps
# it against jax.nn; here it runs on the cases that exercise how the arguments reach it.
CHUNKED_CASES = {"gqa", "mha", "unbatched_mask_bias_causal", "causal_q_longer", "mask_B1T1",
                 "bias_1N1S", "both_lengths_one_empty", "window_right", "everything"}
GRID = [(case, implementation) for case in CASES for implementation in IMPLEMENTATIONS_UNDER_TEST
        if implementation != "chunked" or case.id in CHUNKED_CASES]


def _ids(x):
  return x.id if isinstance(x, Case) else str(x)


@functools.cache
def _jax_nn(case: Case, dtype=jnp.float32) -> np.ndarray:
  query, key, value, bias, mask = case.arrays(dtype)
  return np.asarray(jax.nn.dot_product_attention(
      query, key, value, bias, mask, implementation="xla", **case.kwargs()).astype(jnp.float32))


@functools.cache
def _ours(case: Case, implementation, dtype=jnp.float32) -> jax.Array:
  query, key, value, bias, mask = case.arrays(dtype)
  return attn_jax.dot_product_attention(query, key, value, bias, mask, **case.kwargs(),
                                        implementation=implementation)


# ----------------------------------------------------------------------------- forward values


@pytest.mark.parametrize("case,implementation", GRID, ids=_ids)
def test_matches_jax_nn_and_fully_masked_rows_are_zeros(case, implementation):
  out = _ours(case, implementation)
  query = case.arrays()[0]
  assert out.shape == query.shape and out.dtype == jnp.float32
  ok = case.rows_ok()
  assert ok.any()
  np.testing.assert_allclose(np.asarray(out)[ok], _jax_nn(case)[ok], atol=1e-5, rtol=0)
  np.testing.assert_array_equal(np.asarray(out)[~ok], 0.0)
  chosen = attn_jax.select_implementation(*case.arrays(), **case.kwargs(),
                                          implementation=implementation)
  assert chosen == (implementation or "xla")  # float32, small: never cuDNN, never chunked


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_reference_equals_xla(case):
  np.testing.assert_allclose(_ours(case, "reference"), _ours(case, "xla"), atol=1e-6, rtol=0)


@pytest.mark.parametrize("case,implementation",
                         [(c, i) for c, i in GRID if c in BF16_CASES], ids=_ids)
def test_bfloat16_matches_jax_nn(case, implementation):
  out = _ours(case, implementation, jnp.bfloat16)
  assert out.dtype == jnp.bfloat16
  ok = case.rows_ok()
  out = np.asarray(out.astype(jnp.float32))
  np.testing.assert_allclose(out[ok], _jax_nn(case, jnp.bfloat16)[ok], atol=2e-2, rtol=0)
  np.testing.assert_array_equal(out[~ok], 0.0)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS_UNDER_TEST, ids=_ids)
@pytest.mark.parametrize("q_len,kv_len", [(3, 5), (5, 3)])
def test_is_causal_equals_explicit_causal_mask(implementation, q_len, kv_len):
  query, key, value, bias, _ = Case("c", q_len=q_len, kv_len=kv_len,
                                    bias_shape=(B, N, q_len, kv_len)).arrays()
  causal = jnp.tril(jnp.ones((q_len, kv_len), bool))  # top-left aligned, as jax.nn
  call = functools.partial(attn_jax.dot_product_attention, query, key, value, bias,
                           implementation=implementation)
  np.testing.assert_array_equal(call(is_causal=True), call(mask=causal))


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS_UNDER_TEST, ids=_ids)
def test_huge_logits_finite_and_equal_to_jax_nn(implementation):
  query, key, value, _, mask = Case("x", mask_shape=(B, N, T, S)).arrays()
  out = attn_jax.dot_product_attention(query, key, value, mask=mask, scale=1e4,
                                       implementation=implementation)
  expected = jax.nn.dot_product_attention(query, key, value, mask=mask, scale=1e4,
                                          implementation="xla")
  ok = Case("x", mask_shape=(B, N, T, S)).rows_ok()
  assert np.all(np.isfinite(out))
  np.testing.assert_allclose(np.asarray(out)[ok], np.asarray(expected)[ok], atol=1e-5, rtol=0)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS_UNDER_TEST, ids=_ids)
def test_jit_equals_eager_and_traces_once(implementation):
  case = EVERYTHING
  query, key, value, bias, mask = case.arrays()
  static = dict(is_causal=True, local_window_size=(1, 0), implementation=implementation)

  def attend(query, key, value, bias, mask, q_lengths, kv_lengths):
    return attn_jax.dot_product_attention(query, key, value, bias, mask, **static,
                                          query_seq_lengths=q_lengths,
                                          key_value_seq_lengths=kv_lengths)

  chex.clear_trace_counter()  # the counter is keyed by the function's code, shared by parameters
  jitted = jax.jit(chex.assert_max_traces(attend, n=1))
  for step, (q_lengths, kv_lengths) in enumerate([((3, 2), (5, 4)), ((1, 3), (2, 5)),
                                                  ((2, 2), (3, 3))]):
    args = (query + step, key, value * step, bias, mask, jnp.array(q_lengths),
            jnp.array(kv_lengths))
    np.testing.assert_allclose(jitted(*args), attend(*args), atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------- gradients

GRAD_STATIC = dict(is_causal=True, local_window_size=(2, 0))  # with mask, bias, both lengths


@functools.cache
def _value_and_grads(implementation):
  """Jitted (loss, out), (d_query, d_key, d_value, d_bias) of ``sum(out * cotangent)``.

  ``implementation="jax.nn"`` gives jax.nn's XLA attention. Everything but the static masks is an
  argument, so one compilation per implementation serves every gradient test below.
  """

  def loss(query, key, value, bias, mask, q_lengths, kv_lengths, cotangent):
    if implementation == "jax.nn":
      attend = functools.partial(jax.nn.dot_product_attention, implementation="xla")
    else:
      attend = functools.partial(attn_jax.dot_product_attention, implementation=implementation)
    out = attend(query, key, value, bias, mask, **GRAD_STATIC, query_seq_lengths=q_lengths,
                 key_value_seq_lengths=kv_lengths)
    return jnp.sum(out * cotangent), out

  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3), has_aux=True))


def _grad_inputs(q_lengths, kv_lengths, hidden_keys=()):
  """Base-shape inputs; ``mask`` [B, 1, 1, S] hides the (batch, key) pairs in ``hidden_keys``."""
  query, key, value, _, _ = Case("g").arrays()
  rng = np.random.default_rng(1)
  bias = jnp.asarray(rng.standard_normal((B, N, T, S)), jnp.float32)
  mask = np.ones((B, 1, 1, S), bool)
  for b, s in hidden_keys:
    mask[b, 0, 0, s] = False
  case = Case("g", **GRAD_STATIC, query_seq_lengths=q_lengths, key_value_seq_lengths=kv_lengths)
  allowed = case.allowed() & mask  # [B, N, T, S]
  cotangent = jnp.asarray(rng.standard_normal((B, T, N, H)), jnp.float32)
  args = [query, key, value, bias, jnp.asarray(mask), jnp.array(q_lengths), jnp.array(kv_lengths),
          cotangent]
  return args, allowed


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS_UNDER_TEST, ids=_ids)
def test_grads_equal_jax_nn_when_no_row_is_fully_masked(implementation):
  args, allowed = _grad_inputs(q_lengths=(T, T), kv_lengths=(4, 1), hidden_keys=[(0, 2)])
  assert allowed.any(-1).all()  # causal: every query sees key 0
  (_, out), grads = _value_and_grads(implementation)(*args)
  (_, expected_out), expected_grads = _value_and_grads("jax.nn")(*args)
  np.testing.assert_allclose(out, expected_out, atol=1e-5, rtol=0)
  for name, got, expected in zip("qkvb", grads, expected_grads, strict=True):
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0, err_msg=name)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS_UNDER_TEST, ids=_ids)
def test_grads_finite_and_zero_at_fully_masked_rows(implementation):
  args, allowed = _grad_inputs(q_lengths=(T, 1), kv_lengths=(5, 0), hidden_keys=[(0, 0)])
  rows_ok = np.swapaxes(allowed.any(-1), 1, 2)  # [B, T, N]
  assert not rows_ok.all()
  (_, out), (d_query, d_key, d_value, d_bias) = _value_and_grads(implementation)(*args)
  for grad in (d_query, d_key, d_value, d_bias):
    assert np.all(np.isfinite(grad))
  np.testing.assert_array_equal(np.asarray(out)[~rows_ok], 0.0)
  np.testing.assert_array_equal(np.asarray(d_query)[~rows_ok], 0.0)
  np.testing.assert_array_equal(np.asarray(d_bias)[~allowed], 0.0)


def _poison(x, where_BS, garbage):
  """x [B, S, K, H] with ``garbage`` at the (batch, position) pairs where ``where_BS`` is True."""
  return jnp.where(jnp.asarray(where_BS)[:, :, None, None], garbage, x)


@pytest.mark.parametrize("garbage", [np.nan, 1e30, -1e30])
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS_UNDER_TEST, ids=_ids)
def test_garbage_at_masked_positions_changes_no_output_or_gradient(implementation, garbage):
  # Example 0 sees key 0 only (key 1 hidden by the mask, keys >= 2 padding). Example 1 sees keys
  # 0 and 1: keys 3, 4 are padding, and key 2 only query 2 could see (causal), a padded query.
  args, allowed = _grad_inputs(q_lengths=(T, 2), kv_lengths=(2, 3), hidden_keys=[(0, 1)])
  unseen_BS = ~allowed.any(axis=(1, 2))
  assert unseen_BS.sum() == 7
  value_and_grads = _value_and_grads(implementation)
  (clean_loss, clean_out), clean_grads = value_and_grads(*args)

  def check(poisoned_args, what):
    (loss, out), grads = value_and_grads(*poisoned_args)
    np.testing.assert_array_equal(out, clean_out, err_msg=what)
    np.testing.assert_array_equal(loss, clean_loss, err_msg=what)
    for name, grad, clean_grad in zip("qkvb", grads, clean_grads, strict=True):
      assert np.all(np.isfinite(grad)), (what, name)
      np.testing.assert_array_equal(grad, clean_grad, err_msg=f"{what}: d_{name}")

  query, key, value, bias, *rest = args
  check([query, _poison(key, unseen_BS, garbage), _poison(value, unseen_BS, garbage), bias,
         *rest], "key/value at positions no query sees")
  if np.isfinite(garbage):  # huge finite bias wherever the combined mask is False
    check([query, key, value, jnp.where(allowed, bias, garbage), *rest], "bias at masked logits")


@pytest.mark.parametrize("garbage", [1e30, -1e30])
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS_UNDER_TEST, ids=_ids)
def test_huge_values_at_a_key_masked_for_some_queries_leak_nowhere(implementation, garbage):
  # Causal: key 2 is seen by query 2 only. With query 2's cotangent zero, a huge key/value there
  # must not reach queries 0 and 1 (their weight on it is exactly 0) nor any gradient.
  args, _ = _grad_inputs(q_lengths=(T, T), kv_lengths=(S, S))
  query, key, value, bias, mask, q_lengths, kv_lengths, cotangent = args
  cotangent = cotangent.at[:, 2].set(0.0)
  at_key_2 = np.zeros((B, S), bool)
  at_key_2[:, 2] = True
  value_and_grads = _value_and_grads(implementation)
  (_, clean_out), clean_grads = value_and_grads(query, key, value, bias, mask, q_lengths,
                                                kv_lengths, cotangent)
  (_, out), grads = value_and_grads(query, _poison(key, at_key_2, garbage),
                                    _poison(value, at_key_2, garbage), bias, mask, q_lengths,
                                    kv_lengths, cotangent)
  np.testing.assert_array_equal(out[:, :2], clean_out[:, :2])
  for name, grad, clean_grad in zip("qkvb", grads, clean_grads, strict=True):
    assert np.all(np.isfinite(grad)), name
    np.testing.assert_array_equal(grad, clean_grad, err_msg=f"d_{name}")


# None is left out here only: it dispatches to one of the others (asserted for every case above),
# and check_grads' second order compiles a dozen programs per implementation.
@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("implementation", [i for i in IMPLEMENTATIONS_UNDER_TEST if i], ids=_ids)
def test_check_grads_order_2_in_float64(implementation, make_qkv):
  query, key, value = make_qkv(batch=1, q_len=2, kv_len=3, num_heads=2, num_kv_heads=1,
                               head_dim=2, dtype=jnp.float64)
  bias = jnp.asarray(np.random.default_rng(2).standard_normal((1, 2, 2, 3)), jnp.float64)
  mask = jnp.array([[[[True, True, False], [True, False, True]],
                     [[False, False, False], [True, True, True]]]])  # head 1, query 0: none
  attend = jax.jit(lambda q, k, v, b: attn_jax.dot_product_attention(
      q, k, v, b, mask, implementation=implementation))
  assert attend(query, key, value, bias).dtype == jnp.float64
  # "chunked" has a hand-written backward pass (jax.custom_vjp), which JAX cannot push forward-mode
  # tangents through; reverse mode to second order still checks that backward pass's own VJP.
  modes = ("rev",) if implementation == "chunked" else ("fwd", "rev")
  check_grads(attend, (query, key, value, bias), order=2, modes=modes)


# ----------------------------------------------------------------------------- weights, cosine


def _np_weights(query, key, allowed, logits_fn):
  """numpy softmax weights [B, N, T, S] over ``allowed`` from [B, T, N, H] / [B, S, K, H]."""
  query, key = np.asarray(query, np.float64), np.asarray(key, np.float64)
  key = np.repeat(key, query.shape[2] // key.shape[2], axis=2)  # kv head n // G serves head n
  logits = logits_fn(query, key)  # [B, N, T, S]
  logits = np.where(allowed, logits, -np.inf)
  row_max = np.max(logits, axis=-1, keepdims=True)
  unnormalized = np.where(allowed, np.exp(logits - np.where(np.isfinite(row_max), row_max, 0)), 0)
  total = unnormalized.sum(-1, keepdims=True)
  return unnormalized / np.where(total > 0, total, 1)


def _np_cosine_logits(scale):
  unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
  return lambda q, k: scale * np.einsum("btnh,bsnh->bnts", unit(q), unit(k))


WEIGHTS_CASE = Case("w", mask_shape=(B, N, T, S), bias_shape=(1, N, T, S), is_causal=True)


def test_attention_weights_equal_numpy_and_recombine_to_the_output():
  query, key, value, bias, mask = WEIGHTS_CASE.arrays()
  allowed = WEIGHTS_CASE.allowed()
  weights = attn_jax.attention_weights(query, key, bias, mask, is_causal=True)
  assert weights.shape == (B, N, T, S)
  expected = _np_weights(query, key, allowed, lambda q, k: np.einsum("btnh,bsnh->bnts", q, k)
                         / np.sqrt(H) + np.asarray(bias))
  np.testing.assert_allclose(weights, expected, atol=1e-6)
  ok = allowed.any(-1)
  assert (~ok).any()
  np.testing.assert_allclose(np.asarray(weights).sum(-1)[ok], 1.0, rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(weights)[~ok], 0.0)
  # The weights are the ones the output is made of: [B, N, T, S] x [B, S, N, H] -> [B, T, N, H].
  recombined = jnp.einsum("bnts,bsnh->btnh", weights, jnp.repeat(value, N // K, axis=2))
  out = attn_jax.dot_product_attention(query, key, value, bias, mask, is_causal=True)
  np.testing.assert_allclose(recombined, out, atol=1e-6)


def test_attention_weights_unbatched():
  query, key, _, _, _ = WEIGHTS_CASE.arrays()
  weights = attn_jax.attention_weights(query[1], key[1], is_causal=True)
  assert weights.shape == (N, T, S)
  np.testing.assert_allclose(weights, attn_jax.attention_weights(query, key, is_causal=True)[1],
                             atol=1e-7)


@pytest.mark.parametrize("scale", [None, 3.0])
def test_cosine_weights_equal_numpy_with_logits_in_minus_scale_to_scale(scale):
  query, key, _, _, mask = WEIGHTS_CASE.arrays()
  bound = np.sqrt(H) if scale is None else scale  # the documented default: sqrt(head_dim)
  # Key 0 points along query 0 (head 0) and key 1 against it: both ends of [-scale, scale].
  key = key.at[:, 0, 0].set(7.0 * query[:, 0, 0]).at[:, 1, 0].set(-0.1 * query[:, 0, 0])
  cosine_weights = functools.partial(attn_jax.attention_weights, query, key * 1e3, scale=scale,
                                     score="cosine")  # the keys' norm plays no role
  np.testing.assert_allclose(
      cosine_weights(mask=mask),
      _np_weights(query, key, np.asarray(mask), _np_cosine_logits(bound)), atol=1e-6)
  weights = np.asarray(cosine_weights())
  log_ratio = np.log(weights[:, 0, 0, 0]) - np.log(weights[:, 0, 0, 1])
  np.testing.assert_allclose(log_ratio, 2 * bound, rtol=1e-5)
  log_weights = np.log(weights)  # no mask: every weight is positive
  assert np.all(log_weights.max(-1) - log_weights.min(-1) <= 2 * bound * (1 + 1e-5))


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS_UNDER_TEST, ids=_ids)
def test_cosine_output_equals_numpy(implementation):
  query, key, value, _, mask = WEIGHTS_CASE.arrays()
  allowed = WEIGHTS_CASE.allowed()
  out = attn_jax.dot_product_attention(query, key, value, mask=mask, is_causal=True,
                                       score="cosine", implementation=implementation)
  weights = _np_weights(query, key, allowed, _np_cosine_logits(np.sqrt(H)))
  expected = np.einsum("bnts,bsnh->btnh", weights, np.repeat(np.asarray(value), N // K, axis=2))
  np.testing.assert_allclose(out, expected, atol=1e-5)


# ----------------------------------------------------------------------------- bad arguments


def _bad_call(**changes):
  """Arguments of a valid call (query [2, 3, 4, 4], key/value [2, 5, 2, 4]) with ``changes``."""
  args = dict(query=np.ones((B, T, N, H), np.float32), key=np.ones((B, S, K, H), np.float32),
              value=np.ones((B, S, K, H), np.float32))
  args.update(changes)
  return args


BAD_SHAPES = {
    "query_rank_2": (_bad_call(query=np.ones((T, H), np.float32)), r"\(3, 4\)"),
    "query_rank_5": (_bad_call(query=np.ones((1, B, T, N, H), np.float32)), r"\(1, 2, 3, 4, 4\)"),
    "key_rank_3": (_bad_call(key=np.ones((S, K, H), np.float32)), r"\(5, 2, 4\)"),
    "batch_mismatch": (_bad_call(key=np.ones((3, S, K, H), np.float32),
                                 value=np.ones((3, S, K, H), np.float32)), r"\(3, 5, 2, 4\)"),
    "head_dim_mismatch": (_bad_call(key=np.ones((B, S, K, 3), np.float32),
                                    value=np.ones((B, S, K, 3), np.float32)), r"\(2, 5, 2, 3\)"),
    "value_shape": (_bad_call(value=np.ones((B, S + 1, K, H), np.float32)), r"\(2, 6, 2, 4\)"),
    "heads_not_multiple": (_bad_call(query=np.ones((B, T, 3, H), np.float32)),
                           r"\(2, 3, 3, 4\).*\(2, 5, 2, 4\)"),
    "bias_not_broadcastable": (_bad_call(bias=np.ones((B, N, T, S + 1), np.float32)),
                               r"\(2, 4, 3, 6\)"),
    "bias_rank_5": (_bad_call(bias=np.ones((1, B, N, T, S), np.float32)), r"\(1, 2, 4, 3, 5\)"),
    "mask_wrong_heads": (_bad_call(mask=np.ones((B, 3, T, S), bool)), r"\(2, 3, 3, 5\)"),
    "query_seq_lengths_shape": (_bad_call(query_seq_lengths=np.array([1, 2, 3])), r"\(3,\)"),
    "kv_seq_lengths_shape": (_bad_call(key_value_seq_lengths=np.array([[1, 2]])), r"\(1, 2\)"),
}
BAD_VALUES = {
    "mask_not_bool": (_bad_call(mask=np.ones((B, N, T, S), np.float32)), "float32"),
    "bias_int": (_bad_call(bias=np.ones((B, N, T, S), np.int32)), "int32"),
    "int_query": (_bad_call(query=np.ones((B, T, N, H), np.int32)), "int32"),
    "mixed_dtypes": (_bad_call(key=np.ones((B, S, K, H), jnp.bfloat16)), "bfloat16"),
    "float_lengths": (_bad_call(key_value_seq_lengths=np.array([1.0, 2.0])), "float"),
    "negative_window": (_bad_call(local_window_size=-1), "-1"),
    "window_triple": (_bad_call(local_window_size=(1, 2, 3)), r"\(1, 2, 3\)"),
    "unknown_score": (_bad_call(score="bogus"), "'bogus'"),
    "unknown_implementation": (_bad_call(implementation="fastest"), "'fastest'"),
}


@pytest.mark.parametrize("name", list(BAD_SHAPES) + list(BAD_VALUES))
def test_bad_arguments_raise_value_error_naming_what_was_received(name):
  kwargs, match = {**BAD_SHAPES, **BAD_VALUES}[name]
  with pytest.raises(ValueError, match=match):
    attn_jax.dot_product_attention(**kwargs)
  with pytest.raises(ValueError, match=match):  # the same validation answers "which would run"
    attn_jax.select_implementation(**kwargs)


@pytest.mark.parametrize("name", ["query_rank_2", "heads_not_multiple", "bias_not_broadcastable",
                                  "mask_not_bool", "int_query", "unknown_score"])
def test_attention_weights_bad_arguments_raise(name):
  kwargs, match = {**BAD_SHAPES, **BAD_VALUES}[name]
  kwargs = {k: v for k, v in kwargs.items() if k != "value"}
  with pytest.raises(ValueError, match=match):
    attn_jax.attention_weights(**kwargs)


def test_cudnn_refuses_what_it_cannot_serve_and_says_why():
  query, key, value, _, _ = CASES[0].arrays(jnp.bfloat16)
  with pytest.raises(ValueError, match="cosine"):  # on any backend: cuDNN has no cosine score
    attn_jax.dot_product_attention(query, key, value, score="cosine", implementation="cudnn")
  if jax.default_backend() == "cpu":
    for dtype in (jnp.float32, jnp.bfloat16):
      q, k, v = (x.astype(dtype) for x in (query, key, value))
      with pytest.raises(ValueError, match="GPU"):
        attn_jax.dot_product_attention(q, k, v, implementation="cudnn")


# ----------------------------------------------------------------------------- select


def test_select_implementation_small_cpu_call_is_xla_and_explicit_choice_is_kept():
  query, key, value, bias, mask = CASES[0].arrays()
  if jax.default_backend() == "cpu":
    for dtype in (jnp.float32, jnp.bfloat16):
      q, k, v = (x.astype(dtype) for x in (query, key, value))
      assert attn_jax.select_implementation(q, k, v, is_causal=True) == "xla"
  for implementation in ("reference", "xla"):
    assert attn_jax.select_implementation(
        query, key, value, implementation=implementation) == implementation


def test_select_implementation_moves_to_chunked_above_the_logits_threshold(monkeypatch):
  query, key, value, _, _ = CASES[0].arrays()  # float32: never cuDNN
  monkeypatch.setattr(attention_module, "device_free_bytes", lambda: None)  # no memory stats
  num_logits = B * N * T * S
  assert num_logits < attention_module.CHUNKED_MIN_LOGITS
  monkeypatch.setattr(attention_module, "CHUNKED_MIN_LOGITS", num_logits + 1)
  assert attn_jax.select_implementation(query, key, value) == "xla"
  monkeypatch.setattr(attention_module, "CHUNKED_MIN_LOGITS", num_logits)
  assert attn_jax.select_implementation(query, key, value) == "chunked"
  assert attn_jax.select_implementation(query[0], key[0], value[0]) == "xla"  # B = 1: half


def test_select_implementation_on_cpu_moves_to_chunked_for_long_sequences(monkeypatch):
  """On CPU the chunked kernel is the faster one for long sequences (T * S per head)."""
  query, key, value, _, _ = CASES[0].arrays()
  if jax.default_backend() != "cpu":
    pytest.skip(f"the CPU rule; this backend is {jax.default_backend()!r}")
  monkeypatch.setattr(attention_module, "CHUNKED_MIN_CPU_LOGITS_PER_HEAD", T * S + 1)
  assert attn_jax.select_implementation(query, key, value) == "xla"
  monkeypatch.setattr(attention_module, "CHUNKED_MIN_CPU_LOGITS_PER_HEAD", T * S)
  assert attn_jax.select_implementation(query, key, value) == "chunked"
  assert attn_jax.select_implementation(query[:, :-1], key, value) == "xla"  # T * S smaller


@pytest.mark.parametrize("backend", ["gpu", "tpu"])
def test_on_accelerators_chunked_when_xla_would_not_fit_in_free_memory(monkeypatch, backend):
  """The XLA path keeps 8 bytes per logit for the backward; chunked beyond half the free memory."""
  query, key, value, _, _ = CASES[0].arrays()  # float32: never cuDNN
  xla_bytes = B * N * T * S * attention_module.XLA_BYTES_PER_LOGIT
  monkeypatch.setattr(attention_module.jax, "default_backend", lambda: backend)
  monkeypatch.setattr(attention_module.cudnn, "device_capability", lambda: None)
  monkeypatch.setattr(attention_module, "device_free_bytes", lambda: 2 * xla_bytes)
  assert attn_jax.select_implementation(query, key, value) == "xla"  # exactly half: fits
  monkeypatch.setattr(attention_module, "device_free_bytes", lambda: 2 * xla_bytes - 1)
  assert attn_jax.select_implementation(query, key, value) == "chunked"
  # Far below CPU's per-head threshold: the accelerator rule alone decides.
  monkeypatch.setattr(attention_module, "device_free_bytes", lambda: 10**12)
  assert attn_jax.select_implementation(query, key, value) == "xla"


def test_device_free_bytes_reads_memory_stats_or_says_none():
  free = attention_module.device_free_bytes()
  stats = jax.devices()[0].memory_stats()
  if not stats:
    assert free is None
  else:
    assert free == stats["bytes_limit"] - stats.get("bytes_in_use", 0)


def test_repeated_eager_calls_compile_the_chunked_kernel_once():
  """Cosine and dot on the chunked path: the same shapes reuse one compiled program."""
  from attn_jax.core import chunked

  query, key, value, _, _ = CASES[0].arrays()
  for score in ("cosine", "dot"):
    call = lambda q, score=score: attn_jax.dot_product_attention(
        q, key, value, score=score, implementation="chunked")
    call(query)
    before = chunked._attend._cache_size()
    for step in range(3):
      call(query + step)
    assert chunked._attend._cache_size() == before, score


def test_default_above_the_threshold_runs_chunked_and_agrees(monkeypatch):
  monkeypatch.setattr(attention_module, "CHUNKED_MIN_LOGITS", 1)
  out = _ours.__wrapped__(EVERYTHING, None)
  np.testing.assert_array_equal(out, _ours(EVERYTHING, "chunked"))  # the same program
  np.testing.assert_allclose(out, _ours(EVERYTHING, "reference"), atol=1e-5)


# ----------------------------------------------------------------------------- random masks


@settings(max_examples=12, deadline=None, derandomize=True, database=None)
@given(data=st.data())
def test_random_masks_reference_equals_xla_equals_jax_nn(data):
  # Shapes fixed at the common ones (so compilations are shared); everything else is drawn.
  draw = lambda strategy: data.draw(strategy)
  case = Case(
      "random",
      mask_shape=draw(st.sampled_from([None, (B, N, T, S), (1, 1, T, S), (B, 1, 1, S)])),
      bias_shape=draw(st.sampled_from([None, (B, N, T, S), (1, N, 1, S)])),
      is_causal=draw(st.booleans()),
      query_seq_lengths=draw(st.none() | st.tuples(*[st.integers(0, T)] * B)),
      key_value_seq_lengths=draw(st.none() | st.tuples(*[st.integers(0, S)] * B)),
      local_window_size=draw(st.none() | st.integers(0, 3) | st.tuples(st.integers(0, 3),
                                                                       st.integers(0, 3))))
  ok = case.rows_ok()
  reference, xla = (np.asarray(_ours.__wrapped__(case, i)) for i in ("reference", "xla"))
  np.testing.assert_allclose(reference, xla, atol=1e-6, rtol=0)
  np.testing.assert_allclose(xla[ok], _jax_nn.__wrapped__(case)[ok], atol=1e-5, rtol=0)
  np.testing.assert_array_equal(xla[~ok], 0.0)
