"""Block-mask cost in a training step: plan once per step, reused by every layer.

A 4-layer causal `attn_jax.nn.TransformerEncoder` (d_model 256, 4 heads of 64, d_ff 512) on one
row of 8 packed documents at L8192, segment ids traced (they arrive as arguments of the jitted
step, so the plan is computed on device). Timed in interleaved rounds, one process:

- ``step``: one training step's gradient (forward + backward), the plan included;
- ``plan``: `attn_jax.nn.attention_block_mask` alone, as the step computes it (once);
- ``step with a plan per layer``: the same step with every layer planning its own (the
  ``segment_ids=`` of each `MultiHeadAttention`), what a model without a shared block mask does.

  python -m benchmarks.block_mask [--seq-len 8192] [--out benchmarks/results/block_mask_cpu.json]
"""

import argparse
import json
import os
import statistics

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import attn_jax
from attn_jax.nn import TransformerEncoder
from attn_jax.nn.attention import attention_block_mask
from benchmarks import attention

LAYERS, HEADS, D_MODEL, D_FF, DOCUMENTS, VOCAB = 4, 4, 256, 512, 8, 256


def programs(seq_len: int):
  model = TransformerEncoder(vocab_size=VOCAB, max_len=seq_len, num_layers=LAYERS,
                             num_heads=HEADS, d_model=D_MODEL, d_ff=D_FF, causal=True,
                             positional="rope", rngs=nnx.Rngs(0))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  tokens = jax.random.randint(jax.random.key(1), (1, seq_len), 0, VOCAB)
  ids = jnp.repeat(jnp.arange(DOCUMENTS, dtype=jnp.int32), seq_len // DOCUMENTS)[None]
  positions = (jnp.arange(seq_len) % (seq_len // DOCUMENTS))[None]

  def loss(params, tokens, ids, per_layer):
    model = nnx.merge(graphdef, params, rest)
    if not per_layer:
      logits = model(tokens, positions=positions, segment_ids=ids)
    else:  # each layer plans its own mask from the ids, as without a shared block mask
      x = model.embed(tokens)
      for block in model.blocks:
        x = block(x, mask=None, is_causal=True, positions=positions, segment_ids=ids)
      logits = model.classifier(model.final_norm(x))
    return optax.softmax_cross_entropy_with_integer_labels(logits, tokens).mean()

  step = lambda per_layer: jax.jit(
      lambda p, t, i: jax.grad(loss)(p, t, i, per_layer))
  plan = jax.jit(lambda ids: attention_block_mask(ids, is_causal=True))
  return {"step": (step(False), (params, tokens, ids)),
          "step with a plan per layer": (step(True), (params, tokens, ids)),
          "plan": (plan, (ids,))}


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--seq-len", type=int, default=8192)
  parser.add_argument("--runs", type=int, default=5)
  parser.add_argument("--budget-s", type=float, default=120.0)
  parser.add_argument("--out", default=None)
  args = parser.parse_args(argv)
  machine = {"backend": jax.default_backend(), "cpu_count": os.cpu_count(),
             "cpu_model": attention._cpu_model(), "jax": jax.__version__,
             "attn_jax": attn_jax.__version__, "load_average_start": os.getloadavg()}
  print(json.dumps(machine), flush=True)
  compiled = {}
  for name, (fn, fn_args) in programs(args.seq_len).items():
    compiled[name] = (lambda c, a: lambda: c(*a))(fn.lower(*fn_args).compile(), fn_args)
  samples = attention.time_interleaved(compiled, (), args.runs, args.budget_s)
  rows = []
  for name, seconds in samples.items():
    row = {"program": name, "seq_len": args.seq_len, "runs": len(seconds),
           "ms": 1e3 * statistics.median(w for w, _ in seconds),
           "cpu_ms": 1e3 * statistics.median(c for _, c in seconds)}
    rows.append(row)
    print(json.dumps(row), flush=True)
  machine["load_average_end"] = os.getloadavg()
  by_name = {r["program"]: r for r in rows}
  summary = {"plan_share_of_step": by_name["plan"]["ms"] / by_name["step"]["ms"],
             "per_layer_plans_over_shared": (by_name["step with a plan per layer"]["ms"]
                                             / by_name["step"]["ms"])}
  print(json.dumps(summary))
  if args.out:
    attention.write_json(args.out, {"machine": machine, "timing": "median of interleaved runs",
                                    "model": {"layers": LAYERS, "heads": HEADS,
                                              "d_model": D_MODEL, "d_ff": D_FF,
                                              "documents": DOCUMENTS},
                                    "results": rows, "summary": summary})


if __name__ == "__main__":
  main()
