"""Train-step benchmark: attn_jax's encoder and LSTM against idiomatic Flax NNX models.

One full training step (forward + backward + optax Adam update; jitted, with donated parameter and
optimiser buffers; timed to ``block_until_ready``) at the copy-task shape of the long-range
experiment: tokens int [B=64, L=120] in [0, 10), vocab 10.

- encoder: attn_jax `TransformerEncoder` (fused [D, N + 2K, H] QKV kernel) vs a pre-LN encoder
  built from `nnx.MultiHeadAttention`, `nnx.LayerNorm`, `nnx.Linear`, `nnx.Embed` with the same
  sinusoidal positions and the same GELU; d_model 64, 4 heads, d_ff 256, 2 layers.
- lstm: attn_jax `LSTMBaseline` (input projection hoisted out of the scan, fused gates) vs
  embed -> `nnx.RNN(nnx.LSTMCell)` -> `nnx.Linear`; hidden 128, 1 layer. Both sides are given
  an explicit zero initial carry (left to itself, `nnx.RNN` draws its carry through an RNG
  stream, extra work that would flatter the comparison).

Both sides of a pair run the very same step function (`nnx.split` once, then `jax.jit` over the
pure state), and their samples are interleaved (A B A B ...) so that load from other processes on
a shared machine hits both sides alike. The table reports the median ms per step of each side and
the median of the per-round ratios (ours / idiomatic), for wall-clock time and, as a second opinion
that contention moves less, for the CPU time the process spent per step.

  python -m benchmarks.train_step [--quick] [--out benchmarks/results/train_step_cpu.json]
      [--models encoder,lstm] [--samples N] [--steps N]
"""

import argparse
import functools
import json
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from attn_jax.core.positional import sinusoidal_embedding
from attn_jax.nn import LSTMBaseline, TransformerEncoder

BATCH_SIZE, SEQ_LEN, VOCAB_SIZE = 64, 120, 10
ENCODER = dict(d_model=64, num_heads=4, d_ff=256, num_layers=2)
LSTM_HIDDEN = 128
# Targets for the ratio ours / idiomatic step time on a 2-core CPU.
TARGETS = {"encoder": 0.95, "lstm": 0.77}
# Why parameter counts may differ between the two sides of a pair.
PARAM_NOTES = {
    "encoder": "nnx.MultiHeadAttention has a key bias (num_layers x d_model numbers) that attn_jax "
               "drops: it adds q . b_k to every logit of a row, which the softmax ignores",
}


# --- The idiomatic Flax NNX models -------------------------------------------------------------


class FlaxEncoderBlock(nnx.Module):
  """Pre-LN block from stock parts: x + MHA(LN(x)), then x + MLP(LN(x)). [B, L, D] -> [B, L, D]."""

  def __init__(self, *, d_model: int, num_heads: int, d_ff: int, rngs: nnx.Rngs):
    self.attn_norm = nnx.LayerNorm(d_model, rngs=rngs)
    self.attention = nnx.MultiHeadAttention(
        num_heads=num_heads, in_features=d_model, decode=False, rngs=rngs)
    self.mlp_norm = nnx.LayerNorm(d_model, rngs=rngs)
    self.up = nnx.Linear(d_model, d_ff, rngs=rngs)
    self.down = nnx.Linear(d_ff, d_model, rngs=rngs)

  def __call__(self, x):
    x = x + self.attention(self.attn_norm(x))
    # jax.nn.gelu (tanh approximation) on both sides: attn_jax's Mlp uses the same.
    return x + self.down(jax.nn.gelu(self.up(self.mlp_norm(x))))


class FlaxEncoder(nnx.Module):
  """Embed + sinusoidal positions -> pre-LN blocks -> LayerNorm -> Linear: [B, L] -> [B, L, V]."""

  def __init__(self, *, vocab_size: int, d_model: int, num_heads: int, d_ff: int,
               num_layers: int, rngs: nnx.Rngs):
    self.d_model = d_model
    self.embed = nnx.Embed(vocab_size, d_model, rngs=rngs)
    self.blocks = nnx.List([
        FlaxEncoderBlock(d_model=d_model, num_heads=num_heads, d_ff=d_ff, rngs=rngs)
        for _ in range(num_layers)])
    self.final_norm = nnx.LayerNorm(d_model, rngs=rngs)
    self.classifier = nnx.Linear(d_model, vocab_size, rngs=rngs)

  def __call__(self, tokens):
    positions = jnp.arange(tokens.shape[1])[None]
    x = self.embed(tokens) + sinusoidal_embedding(positions, self.d_model)
    for block in self.blocks:
      x = block(x)
    return self.classifier(self.final_norm(x))


class FlaxLSTM(nnx.Module):
  """Embed -> nnx.RNN(nnx.LSTMCell) -> Linear: int tokens [B, L] -> logits [B, L, V], from an
  explicit zero carry."""

  def __init__(self, *, vocab_size: int, hidden_size: int, rngs: nnx.Rngs):
    self.hidden_size = hidden_size
    self.embed = nnx.Embed(vocab_size, hidden_size, rngs=rngs)
    self.rnn = nnx.RNN(nnx.LSTMCell(hidden_size, hidden_size, rngs=rngs))
    self.classifier = nnx.Linear(hidden_size, vocab_size, rngs=rngs)

  def __call__(self, tokens):
    zeros = jnp.zeros((tokens.shape[0], self.hidden_size))
    # LSTMCell's carry is (c, h).
    return self.classifier(self.rnn(self.embed(tokens), initial_carry=(zeros, zeros)))


class OursLSTM(nnx.Module):
  """attn_jax's `LSTMBaseline`, given the same explicit zero initial state as `FlaxLSTM`."""

  def __init__(self, *, vocab_size: int, hidden_size: int, rngs: nnx.Rngs):
    self.hidden_size = hidden_size
    self.lstm = LSTMBaseline(vocab_size=vocab_size, hidden_size=hidden_size, num_layers=1,
                             rngs=rngs)

  def __call__(self, tokens):
    zeros = jnp.zeros((tokens.shape[0], self.hidden_size))
    return self.lstm(tokens, initial_states=[(zeros, zeros)])


def build_pairs(seed: int = 0) -> dict[str, tuple[nnx.Module, nnx.Module]]:
  """{name: (attn_jax model, idiomatic Flax NNX model)} at the copy-task shape."""
  return {
      "encoder": (
          TransformerEncoder(vocab_size=VOCAB_SIZE, max_len=SEQ_LEN, dropout_rate=0.0,
                             rngs=nnx.Rngs(seed), **ENCODER),
          FlaxEncoder(vocab_size=VOCAB_SIZE, rngs=nnx.Rngs(seed), **ENCODER)),
      "lstm": (
          OursLSTM(vocab_size=VOCAB_SIZE, hidden_size=LSTM_HIDDEN, rngs=nnx.Rngs(seed)),
          FlaxLSTM(vocab_size=VOCAB_SIZE, hidden_size=LSTM_HIDDEN, rngs=nnx.Rngs(seed))),
  }


# --- One training step, the same for every model -----------------------------------------------


def param_count(model: nnx.Module) -> int:
  return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


class Trainer:
  """A model's pure state plus one jitted Adam step over it (params and opt state donated)."""

  def __init__(self, model: nnx.Module, learning_rate: float = 1e-3):
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx = optax.adam(learning_rate)

    @functools.partial(jax.jit, donate_argnums=(0, 1, 2))
    def step(params, opt_state, rest, tokens, targets):
      model = nnx.merge(graphdef, params, rest)

      def loss_fn(model):
        logits = model(tokens)  # [B, L, V]
        return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()

      # nnx.value_and_grad (w.r.t. nnx.Param) rather than jax's: it carries the non-parameter state
      # that a call may update (an RNG counter), which jax.grad over a merged module refuses to
      # mutate.
      loss, grads = nnx.value_and_grad(loss_fn)(model)
      updates, opt_state = tx.update(grads, opt_state, params)
      params = optax.apply_updates(params, updates)
      return params, opt_state, nnx.state(model, nnx.Not(nnx.Param)), loss

    self.step_fn, self.rest = step, rest
    self.params, self.opt_state = params, tx.init(params)

  def run(self, tokens, targets, steps: int) -> tuple[float, float]:
    """Runs ``steps`` steps; returns the mean wall-clock and process CPU milliseconds per step."""
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(steps):
      self.params, self.opt_state, self.rest, loss = self.step_fn(
          self.params, self.opt_state, self.rest, tokens, targets)
    jax.block_until_ready((self.params, self.opt_state, loss))
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    return wall * 1e3 / steps, cpu * 1e3 / steps


def _paired_ratio(times: dict[str, list[float]]) -> float:
  return statistics.median(a / b for a, b in zip(times["ours"], times["flax"], strict=True))


def compare(ours: nnx.Module, idiomatic: nnx.Module, tokens, targets, *, samples: int,
            steps_per_sample: int, warmup: int) -> dict:
  """Median ms/step of both sides, sampled alternately (A B A B ...).

  Besides wall-clock time, the CPU time the process spent (all threads, user + system) per step:
  on a machine shared with other jobs it moves less than wall-clock time does.
  """
  trainers = {"ours": Trainer(ours), "flax": Trainer(idiomatic)}
  for trainer in trainers.values():  # compile, then settle caches and allocator
    trainer.run(tokens, targets, warmup)
  times = {name: [] for name in trainers}
  cpu_times = {name: [] for name in trainers}
  for i in range(samples):
    # Alternate who goes first too, so neither side always follows the other's cache state.
    order = list(trainers) if i % 2 == 0 else list(trainers)[::-1]
    for name in order:
      wall_ms, cpu_ms = trainers[name].run(tokens, targets, steps_per_sample)
      times[name].append(wall_ms)
      cpu_times[name].append(cpu_ms)
  ours_ms, flax_ms = (statistics.median(times[n]) for n in ("ours", "flax"))
  ours_cpu_ms, flax_cpu_ms = (statistics.median(cpu_times[n]) for n in ("ours", "flax"))
  # The ratio is the median of the per-round ratios: the two samples of a round ran back to back,
  # under the same load. (A ratio of the two medians mixes quiet and busy spells when the load
  # from other jobs changes during the run.)
  return {
      "ours_ms": ours_ms, "flax_ms": flax_ms, "ratio": _paired_ratio(times),
      "ratio_of_medians": ours_ms / flax_ms,
      "ours_cpu_ms": ours_cpu_ms, "flax_cpu_ms": flax_cpu_ms, "cpu_ratio": _paired_ratio(cpu_times),
      "ours_params": param_count(ours), "flax_params": param_count(idiomatic),
      "ours_samples_ms": times["ours"], "flax_samples_ms": times["flax"],
      "ours_cpu_samples_ms": cpu_times["ours"], "flax_cpu_samples_ms": cpu_times["flax"],
  }


def machine_info() -> dict:
  device = jax.devices()[0]
  return {
      "cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine(),
      "platform": platform.platform(), "python": platform.python_version(),
      "jax": jax.__version__, "flax": __import__("flax").__version__, "optax": optax.__version__,
      "backend": jax.default_backend(), "device": getattr(device, "device_kind", str(device)),
      "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
  }


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="fewer samples (a smoke run)")
  parser.add_argument("--out", default=None, help="write the results as JSON here")
  parser.add_argument("--models", default="encoder,lstm", help="comma-separated subset")
  parser.add_argument("--samples", type=int, default=None)
  parser.add_argument("--steps", type=int, default=None, help="steps per sample")
  args = parser.parse_args(argv)
  samples = args.samples or (3 if args.quick else 15)
  steps = args.steps or (2 if args.quick else 5)
  warmup = 2 if args.quick else 5

  data_key, target_key = jax.random.split(jax.random.key(0))
  tokens = jax.random.randint(data_key, (BATCH_SIZE, SEQ_LEN), 0, VOCAB_SIZE)
  targets = jax.random.randint(target_key, (BATCH_SIZE, SEQ_LEN), 0, VOCAB_SIZE)
  info = machine_info()
  print(f"machine: {info['cpu_count']} CPU cores ({info['processor']}), backend "
        f"{info['backend']} ({info['device']}), jax {info['jax']}, flax {info['flax']}, "
        f"load average {info['load_average']}")
  print(f"shape: B{BATCH_SIZE} L{SEQ_LEN} vocab {VOCAB_SIZE}; encoder {ENCODER}; LSTM hidden "
        f"{LSTM_HIDDEN}; {samples} interleaved samples x {steps} steps, medians")
  header = f"{'model':8} {'attn_jax ms':>12} {'flax nnx ms':>12} {'ratio':>7} {'target':>7} " \
           f"{'cpu ratio':>10} {'params (ours / flax)':>22}"
  print(header)
  print("-" * len(header))
  results = {}
  pairs = build_pairs()
  for name in args.models.split(","):
    ours, idiomatic = pairs[name]
    r = compare(ours, idiomatic, tokens, targets, samples=samples, steps_per_sample=steps,
                warmup=warmup)
    if r["ours_params"] != r["flax_params"]:
      r["param_note"] = PARAM_NOTES.get(name, "")
    r["target_ratio"] = TARGETS[name]
    r["meets_target"] = r["ratio"] <= TARGETS[name]
    results[name] = r
    print(f"{name:8} {r['ours_ms']:12.2f} {r['flax_ms']:12.2f} {r['ratio']:7.3f} "
          f"{TARGETS[name]:7.2f} {r['cpu_ratio']:10.3f} {r['ours_params']:>10} / "
          f"{r['flax_params']:<10}")
  for name, r in results.items():
    if "param_note" in r:
      print(f"{name}: {r['flax_params'] - r['ours_params']:+d} params on the flax side: "
            f"{r['param_note']}")
  info["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
  report = {
      "benchmark": "train_step", "machine": info,
      "config": {"batch_size": BATCH_SIZE, "seq_len": SEQ_LEN, "vocab_size": VOCAB_SIZE,
                 "encoder": ENCODER, "lstm_hidden": LSTM_HIDDEN, "optimizer": "adam(1e-3)",
                 "samples": samples, "steps_per_sample": steps, "warmup_steps": warmup,
                 "quick": args.quick},
      "results": results,
  }
  if args.out:
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
      json.dump(report, f, indent=2)
    print(f"wrote {args.out}")
  return report


if __name__ == "__main__":
  main()
