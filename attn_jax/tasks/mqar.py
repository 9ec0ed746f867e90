"""Multi-query associative recall, MQAR (Arora et al. 2023, "Zoology", section 3).

``num_pairs`` key-value pairs come first, then every key is queried once; at a query the model
must output the value that followed that key in the context. Layout of one example
(``N = num_pairs``, ``V = vocab_size``)::

    position   0    1    2    3   ...  2N-2  2N-1 | 2N .......................... L-1
    inputs     k_1  v_1  k_2  v_2 ...  k_N   v_N  | 0 except N query positions holding k_pi(j)
    targets    0 everywhere except at the query positions, which hold the queried key's value
    eval_mask  True exactly at the N query positions

- keys are distinct and drawn from ``[1, V // 2)``, values are distinct and drawn from
  ``[V // 2, V)`` (both without replacement per example, as Zoology does); token 0 is the blank.
- The N query positions are distinct, drawn uniformly among the ``L - 2N`` positions after the
  context, and the keys are queried in a random order (each exactly once). Zoology draws the gaps
  from a power law over even offsets; uniform positions keep the layout simple and still put
  queries at every distance from their pair.
- Encoder-safe: after the context, inputs hold only blanks and keys, never a value token. Zoology
  trains a causal LM that predicts the value *after* the query; here the target sits at the query
  position itself, so a bidirectional encoder sees nothing it could copy the answer from.
- ``distractors=True`` fills the non-query positions after the context with random tokens, as
  Zoology's ``random_non_queries=True`` does, so a query is no longer the only non-blank token
  there. Zoology draws them from the whole vocabulary; here they come uniformly from
  ``[0, V // 2)`` (the blank and the key tokens), never a value token, to stay encoder-safe. A
  distractor may repeat a context key; only the query positions are scored.
"""

import jax
import jax.numpy as jnp

from attn_jax.tasks.batch import Batch


def check_mqar_args(*, batch_size: int, seq_len: int, num_pairs: int, vocab_size: int) -> None:
  """Raises ValueError naming the offending value unless the MQAR sizes are consistent."""
  for name, value in (("batch_size", batch_size), ("seq_len", seq_len),
                      ("num_pairs", num_pairs), ("vocab_size", vocab_size)):
    if not isinstance(value, int) or value < 1:
      raise ValueError(f"mqar: {name} must be a positive int, got {value!r}")
  num_keys = vocab_size // 2 - 1  # keys live in [1, V/2)
  num_values = vocab_size - vocab_size // 2  # values live in [V/2, V)
  if num_pairs > min(num_keys, num_values):
    raise ValueError(
        f"mqar: num_pairs={num_pairs} distinct keys need vocab_size >= {2 * num_pairs + 2} "
        f"(keys from [1, vocab_size/2)), got vocab_size={vocab_size}")
  if seq_len < 3 * num_pairs:
    raise ValueError(
        f"mqar: {num_pairs} pairs (2 tokens each) and {num_pairs} queries need "
        f"seq_len >= {3 * num_pairs}, got seq_len={seq_len}")


def _sample_without_replacement(key: jax.Array, batch_size: int, population: int,
                                count: int) -> jax.Array:
  """``count`` distinct ints from ``[0, population)`` per row: int32 [batch_size, count]."""
  # The ranks of i.i.d. uniforms are a uniform random permutation; keep its first `count`.
  noise_BxP = jax.random.uniform(key, (batch_size, population))
  return jnp.argsort(noise_BxP, axis=-1)[:, :count].astype(jnp.int32)


def mqar(key: jax.Array, *, batch_size: int, seq_len: int, num_pairs: int,
         vocab_size: int, distractors: bool = False) -> Batch:
  """Samples an MQAR batch in the layout of the module docstring.

  Args:
    key: a PRNG key; the batch is a function of it alone.
    batch_size: the number of sequences (a static int >= 1).
    seq_len: the sequence length L (static, ``>= 3 * num_pairs``).
    num_pairs: the key-value pairs of the context, each key queried once later.
    vocab_size: V (static, ``>= 2 * num_pairs + 2``); keys come from the lower half, values
      from the upper half.
    distractors: random tokens from ``[0, V // 2)`` at the non-query positions after the
      context instead of blanks (Zoology's layout).

  Returns:
    Batch(inputs int32 [batch_size, seq_len], targets int32 [batch_size, seq_len], eval_mask
    bool [batch_size, seq_len]); eval_mask is True at the ``num_pairs`` query positions.

  Example:
    >>> batch = mqar(jax.random.key(0), batch_size=2, seq_len=16, num_pairs=2, vocab_size=8)
    >>> batch.inputs.shape, batch.eval_mask.sum(axis=1).tolist()
    ((2, 16), [2, 2])
    >>> bool((batch.targets[batch.eval_mask] >= 4).all())  # the answers are values
    True
  """
  check_mqar_args(batch_size=batch_size, seq_len=seq_len, num_pairs=num_pairs,
                  vocab_size=vocab_size)
  half = vocab_size // 2
  query_region = seq_len - 2 * num_pairs
  # Four streams always, so the pairs and query positions do not depend on ``distractors``.
  key_k, value_k, position_k, distractor_k = jax.random.split(key, 4)
  keys_BxN = 1 + _sample_without_replacement(key_k, batch_size, half - 1, num_pairs)
  values_BxN = half + _sample_without_replacement(
      value_k, batch_size, vocab_size - half, num_pairs)
  # Query j of a row sits at query_pos[j]; the positions come in random order, so the keys are
  # queried in a random order too.
  query_pos_BxN = _sample_without_replacement(position_k, batch_size, query_region, num_pairs)

  # [B, N, 2] -> [B, 2N]: k_1 v_1 k_2 v_2 ...
  context_Bx2N = jnp.stack([keys_BxN, values_BxN], axis=-1).reshape(batch_size, 2 * num_pairs)
  rows_Bx1 = jnp.arange(batch_size)[:, None]
  zeros_BxQ = jnp.zeros((batch_size, query_region), jnp.int32)
  if distractors:
    filler_BxQ = jax.random.randint(distractor_k, (batch_size, query_region), 0, half,
                                    dtype=jnp.int32)
  else:
    filler_BxQ = zeros_BxQ
  query_inputs_BxQ = filler_BxQ.at[rows_Bx1, query_pos_BxN].set(keys_BxN)
  query_targets_BxQ = zeros_BxQ.at[rows_Bx1, query_pos_BxN].set(values_BxN)
  query_mask_BxQ = jnp.zeros((batch_size, query_region), bool).at[
      rows_Bx1, query_pos_BxN].set(True)

  inputs_BxL = jnp.concatenate([context_Bx2N, query_inputs_BxQ], axis=1)
  targets_BxL = jnp.concatenate([jnp.zeros_like(context_Bx2N), query_targets_BxQ], axis=1)
  eval_mask_BxL = jnp.concatenate(
      [jnp.zeros((batch_size, 2 * num_pairs), bool), query_mask_BxQ], axis=1)
  return Batch(inputs_BxL, targets_BxL, eval_mask_BxL)
