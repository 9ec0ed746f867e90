"""Garbage at positions no query may see (or in query rows that may see no key) leaks nowhere.

For every implementation and every way a position can end up unseen — key/value padding
(`key_value_seq_lengths`), query padding (`query_seq_lengths`), an explicit mask alone, and an
explicit mask that allows a pair which causal or window masking then hides — NaN and +-1e30 written
at the unseen positions change no output and no gradient (d_query, d_key, d_value), bit for bit,
and every gradient stays finite.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attn_jax

B, T, S, N, K, H = 2, 6, 6, 4, 2, 8
IMPLEMENTATIONS = (None, "reference", "xla", "chunked", "pallas")


@dataclasses.dataclass(frozen=True)
class Scenario:
  """Arguments under which some key positions or query rows are unseen."""

  id: str
  mask: tuple | None = None  # nested bool [B, 1, T, S]
  is_causal: bool = False
  local_window_size: tuple[int, int] | None = None
  query_seq_lengths: tuple[int, ...] | None = None
  key_value_seq_lengths: tuple[int, ...] | None = None

  def kwargs(self):
    lengths = lambda x: None if x is None else jnp.asarray(x, jnp.int32)
    return dict(mask=None if self.mask is None else jnp.asarray(self.mask),
                is_causal=self.is_causal, local_window_size=self.local_window_size,
                query_seq_lengths=lengths(self.query_seq_lengths),
                key_value_seq_lengths=lengths(self.key_value_seq_lengths))

  def allowed(self) -> np.ndarray:
    """bool [B, T, S], from the definitions (numpy)."""
    t, s = np.arange(T)[:, None], np.arange(S)[None, :]
    allowed = np.ones((B, T, S), bool)
    if self.mask is not None:
      allowed &= np.asarray(self.mask)[:, 0]
    if self.is_causal:
      allowed &= s <= t
    if self.local_window_size is not None:
      left, right = self.local_window_size
      allowed &= (s >= t - left) & (s <= t + right)
    if self.query_seq_lengths is not None:
      allowed &= t < np.asarray(self.query_seq_lengths)[:, None, None]
    if self.key_value_seq_lengths is not None:
      allowed &= s < np.asarray(self.key_value_seq_lengths)[:, None, None]
    return allowed


def _mask(rule) -> tuple:
  """bool [B, 1, T, S] with rule(b, t, s)."""
  return tuple((tuple(tuple(bool(rule(b, t, s)) for s in range(S)) for t in range(T)),)
               for b in range(B))


SCENARIOS = [
    Scenario("kv_padding", key_value_seq_lengths=(4, 1)),
    Scenario("query_padding", query_seq_lengths=(3, 5)),
    Scenario("both_padding_causal", is_causal=True, query_seq_lengths=(4, 6),
             key_value_seq_lengths=(5, 2)),
    # The mask alone hides key 4 (example 0) and key 1 (example 1) from every query, and gives
    # query 2 of example 0 no key at all.
    Scenario("mask_only", mask=_mask(lambda b, t, s: s != (4 if b == 0 else 1)
                                     and not (b == 0 and t == 2))),
    # The mask allows key 5 only to queries 0-2, which causal masking keeps from looking ahead:
    # key 5 is seen by nobody. Query 3 is allowed only keys 4 and 5 (ahead of it): no key at all.
    Scenario("mask_and_causal", is_causal=True,
             mask=_mask(lambda b, t, s: (s == 5 and t <= 2) or (t == 3 and s >= 4)
                        or (s < 5 and t != 3))),
    # A window (1, 1): the mask allows key 0 only to queries 3-5 (outside their window) and
    # gives query 1 only keys 4-5 (outside its window).
    Scenario("mask_and_window", local_window_size=(1, 1),
             mask=_mask(lambda b, t, s: (s == 0 and t >= 3) or (t == 1 and s >= 4)
                        or (s > 0 and t != 1))),
]


def _ids(x):
  return x.id if isinstance(x, Scenario) else str(x)


@functools.cache
def _value_and_grads(scenario: Scenario, implementation):
  """Jitted (out, (d_query, d_key, d_value)) of sum(out * cotangent)."""
  kwargs = scenario.kwargs()

  def loss(query, key, value, cotangent):
    out = attn_jax.dot_product_attention(query, key, value, **kwargs,
                                         implementation=implementation)
    return jnp.sum(out * cotangent), out

  return jax.jit(jax.grad(loss, argnums=(0, 1, 2), has_aux=True))


def _inputs():
  rng = np.random.default_rng(0)
  draw = lambda *shape: jnp.asarray(rng.standard_normal(shape), jnp.float32)
  return draw(B, T, N, H), draw(B, S, K, H), draw(B, S, K, H), draw(B, T, N, H)


def test_scenarios_have_unseen_keys_and_rows():
  for scenario in SCENARIOS:
    allowed = scenario.allowed()
    unseen_keys, unseen_rows = ~allowed.any(1), ~allowed.any(2)
    assert unseen_keys.any() or unseen_rows.any(), scenario.id
  assert (~SCENARIOS[3].allowed().any(1)).sum() == 2 and (~SCENARIOS[3].allowed().any(2)).any()
  for scenario in SCENARIOS[4:]:  # the explicit mask alone would let someone see them
    assert (~scenario.allowed().any(1)).any() and (~scenario.allowed().any(2)).any()
    assert np.asarray(scenario.mask)[:, 0].any(1).all() and np.asarray(scenario.mask).any(-1).all()


@pytest.mark.parametrize("garbage", [np.nan, 1e30, -1e30])
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS, ids=_ids)
@pytest.mark.parametrize("scenario", SCENARIOS, ids=_ids)
def test_garbage_at_unseen_positions_changes_no_output_or_gradient(scenario, implementation,
                                                                   garbage):
  query, key, value, cotangent = _inputs()
  allowed = scenario.allowed()
  unseen_keys_BS = ~allowed.any(1)
  unseen_rows_BT = ~allowed.any(2)
  grads_fn = _value_and_grads(scenario, implementation)
  clean_grads, clean_out = grads_fn(query, key, value, cotangent)

  at_keys = jnp.asarray(unseen_keys_BS)[:, :, None, None]
  at_rows = jnp.asarray(unseen_rows_BT)[:, :, None, None]
  poisoned = (jnp.where(at_rows, garbage, query), jnp.where(at_keys, garbage, key),
              jnp.where(at_keys, garbage, value))
  grads, out = grads_fn(*poisoned, cotangent)
  np.testing.assert_array_equal(out, clean_out)
  np.testing.assert_array_equal(np.asarray(out)[unseen_rows_BT], 0.0)
  for name, grad, clean_grad in zip(("d_query", "d_key", "d_value"), grads, clean_grads,
                                    strict=True):
    assert np.all(np.isfinite(grad)), name
    np.testing.assert_array_equal(grad, clean_grad, err_msg=name)
