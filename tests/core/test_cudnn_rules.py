"""The cuDNN dispatch rules mirror jax's own cuDNN checks, on any machine (no GPU needed).

A faked NVIDIA device (compute capability and cuDNN version) stands in for the GPU, in attn_jax and
in jax alike. jax's validation of its cuDNN path runs in Python when the call is traced, so
`jax.eval_shape` of the gradient of `jax.nn.dot_product_attention(implementation="cudnn")` is the
oracle: over a grid of argument combinations, attn_jax accepts exactly what jax accepts, and
whatever `implementation=None` picks is an implementation that then accepts the arguments.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attn_jax
from attn_jax.core import cudnn

try:
  from jax._src.cudnn import fused_attention_stablehlo as fused
except ImportError:  # pragma: no cover - another jax layout
  fused = None

pytestmark = pytest.mark.skipif(fused is None, reason="jax's cuDNN module moved; rules unchecked")

B, N, K = 2, 4, 2


@pytest.fixture
def fake_gpu(monkeypatch):
  """Returns set(capability, version): fakes an NVIDIA device for attn_jax and for jax."""
  state = {}

  def set_device(capability, version=91000):
    state.update(capability=capability, version=version)

  as_tuple = lambda c: tuple(int(x) for x in c.split("."))
  monkeypatch.setattr(cudnn, "device_capability", lambda: state["capability"])
  monkeypatch.setattr(cudnn, "cudnn_version", lambda: state["version"])
  monkeypatch.setattr(fused, "check_cudnn_version", lambda: state["version"])
  monkeypatch.setattr(fused, "check_compute_capability",
                      lambda c: state["capability"] >= as_tuple(c))
  monkeypatch.setattr(fused, "is_cuda_compute_capability_equal",
                      lambda c: state["capability"] == as_tuple(c))
  return set_device


def _args(dtype, head_dim, length, bias, mask, lengths):
  spec = lambda *shape, dtype=dtype: jnp.zeros(shape, dtype)  # tiny: concrete is cheap
  query = spec(B, length, N, head_dim)
  kv = spec(B, length, K, head_dim)
  bias = {None: None, "full": spec(1, N, length, length), "row": spec(1, N, 1, length)}[bias]
  mask = {None: None, "full": spec(B, 1, length, length, dtype=jnp.bool_),
          "row": spec(B, 1, 1, length, dtype=jnp.bool_)}[mask]
  seq = spec(B, dtype=jnp.int32) if lengths else None
  return query, kv, kv, bias, mask, seq


def _traces(attention, query, key, value, bias, mask, seq, **static) -> str | None:
  """None if the gradient of ``attention`` traces (jax's checks pass), else the error."""
  def loss(q, k, v, b, m, s):
    out = attention(q, k, v, b, m, key_value_seq_lengths=s, **static)
    return out.astype(jnp.float32).sum()

  try:
    jax.eval_shape(jax.grad(loss, argnums=(0, 1, 2)), query, key, value, bias, mask, seq)
  except (ValueError, NotImplementedError, TypeError) as e:
    return str(e)
  return None


GRID = list(itertools.product(
    [(8, 0), (9, 0), (10, 3)],  # compute capability
    [jnp.bfloat16, jnp.float32],
    [64, 132, 136, 264],  # head_dim: ok; not a multiple of 8; > 128 (Ampere max); > 256
    [8, 7],  # q_len = kv_len: even, odd
    [None, "full", "row"],  # bias
    [None, "full", "row"],  # mask
    [False, True],  # is_causal
    [False, True],  # key_value_seq_lengths
    [None, (2, 0), (2, 1)],  # local_window_size
))
# Every combination of the arguments that interact, and a fixed sample of the rest.
SAMPLE = [GRID[i] for i in np.random.default_rng(0).choice(len(GRID), 160, replace=False)]
SAMPLE += [((9, 0), jnp.bfloat16, 64, 8, None, None, True, True, (4, 2))]  # causal+lengths+right
SAMPLE += [((9, 0), jnp.bfloat16, 64, 7, None, "full", False, False, None)]  # mask, odd length


def _id(case):
  cap, dtype, h, length, bias, mask, causal, lengths, window = case
  return (f"cc{cap[0]}{cap[1]}-{jnp.dtype(dtype).name}-h{h}-l{length}-bias_{bias}-mask_{mask}"
          f"-causal{int(causal)}-lengths{int(lengths)}-window_{window}")


@pytest.mark.parametrize("case", SAMPLE, ids=_id)
def test_attn_jax_accepts_exactly_what_jax_cudnn_accepts(fake_gpu, case):
  capability, dtype, head_dim, length, bias, mask, causal, lengths, window = case
  fake_gpu(capability)
  args = _args(dtype, head_dim, length, bias, mask, lengths)
  static = dict(is_causal=causal, local_window_size=window)
  jax_error = _traces(lambda *a, **kw: jax.nn.dot_product_attention(*a, **kw,
                                                                    implementation="cudnn"),
                      *args, **static)
  query, key, value, bias_, mask_, seq = args
  ours = cudnn.unsupported_reason(query, key, value, bias_, mask_, score="dot", is_causal=causal,
                                  local_window_size=window, has_seq_lengths=lengths)
  # What jax accepts but computes wrong (a known bug, not fixed in the installed jax) is refused.
  known_bug = window is not None and not causal and not cudnn.noncausal_window_is_fixed()
  assert (ours is None) == (jax_error is None and not known_bug), (ours, jax_error)
  if known_bug:
    assert "future tokens" in ours
  if ours is None:  # and attn_jax's wrapper around it traces too
    assert _traces(lambda *a, **kw: attn_jax.dot_product_attention(*a, **kw,
                                                                   implementation="cudnn"),
                   *args, **static) is None
  else:
    with pytest.raises(ValueError, match="cudnn"):
      attn_jax.select_implementation(*args[:5], key_value_seq_lengths=seq, implementation="cudnn",
                                     **static)
  chosen = attn_jax.select_implementation(*args[:5], key_value_seq_lengths=seq, **static)
  assert (chosen == "cudnn") == (ours is None)
  assert _traces(attn_jax.dot_product_attention, *args, **static) is None  # the default runs


def test_without_a_gpu_cudnn_is_refused_and_never_chosen():
  if cudnn.device_capability() is not None:
    pytest.skip("an NVIDIA GPU is present")
  query, key, value, *_ = _args(jnp.bfloat16, 64, 8, None, None, False)
  reason = cudnn.unsupported_reason(query, key, value, None, None, score="dot", is_causal=True,
                                    local_window_size=None, has_seq_lengths=False)
  assert "NVIDIA GPU" in reason
  assert attn_jax.select_implementation(query, key, value, is_causal=True) != "cudnn"


def test_noncausal_sliding_window_is_refused_until_jax_carries_the_fix(fake_gpu, monkeypatch):
  fake_gpu((9, 0))
  query, key, value, *_ = _args(jnp.bfloat16, 64, 8, None, None, False)
  reason = lambda causal: cudnn.unsupported_reason(
      query, key, value, None, None, score="dot", is_causal=causal, local_window_size=(2, 0),
      has_seq_lengths=False)
  assert cudnn.NONCAUSAL_WINDOW_FIXED_IN_JAX is None  # no release known to carry the fix
  assert "future tokens" in reason(False)
  assert reason(True) is None  # the causal mask hides the future: computed right
  assert attn_jax.select_implementation(query, key, value, local_window_size=(2, 0)) != "cudnn"
  monkeypatch.setattr(cudnn, "NONCAUSAL_WINDOW_FIXED_IN_JAX", cudnn.jax_version())
  assert reason(False) is None
  monkeypatch.setattr(cudnn, "NONCAUSAL_WINDOW_FIXED_IN_JAX", (99, 0, 0))
  assert reason(False) is not None


@pytest.mark.parametrize("flag, words", [("has_sinks", "sinks"), ("has_dropout", "dropout"),
                                         ("return_residual", "residual")])
def test_sinks_dropout_and_residual_are_refused(fake_gpu, flag, words):
  fake_gpu((9, 0))
  query, key, value, *_ = _args(jnp.bfloat16, 64, 8, None, None, False)
  common = dict(score="dot", is_causal=True, local_window_size=None, has_seq_lengths=False)
  assert cudnn.unsupported_reason(query, key, value, None, None, **common) is None
  reason = cudnn.unsupported_reason(query, key, value, None, None, **common, **{flag: True})
  assert words in reason


def test_jax_version_parses_the_installed_version():
  version = cudnn.jax_version()
  assert len(version) == 3 and version == tuple(int(x) for x in jax.__version__.split(".")[:3])
