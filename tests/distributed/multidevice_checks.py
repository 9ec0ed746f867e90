"""Checks that need 8 (simulated) devices. Not collected by the main run: `test_multidevice.py`
runs this file in its own pytest process with
``XLA_FLAGS=--xla_force_host_platform_device_count=8``, set before jax is imported."""

import re

import jax
import numpy as np
import pytest

from attn_jax.tasks import MqarSpec, make_task
from attn_jax.training import Program, TrainConfig, make_model, model_spec
from attn_jax.training import sharding as shd

STEPS = 3


TASK = MqarSpec(seq_len=16, num_pairs=2, vocab_size=16)


def _program(model="transformer", task=TASK):
  spec = model_spec(model, **({"d_model": 16, "num_heads": 4, "d_ff": 32, "num_layers": 1}
                              if model == "transformer" else {"hidden_size": 16}))
  task = make_task(task)
  config = TrainConfig(num_steps=STEPS, batch_size=16, warmup_steps=1, learning_rate=3e-3)
  return Program(lambda rngs: make_model(spec, vocab_size=task.vocab_size,
                                         max_len=task.seq_len, rngs=rngs), task, config)


def _param_vector(state) -> np.ndarray:
  """Parameters as one vector, in tree order (a flat-parameter state is that vector already)."""
  return np.concatenate([np.ravel(np.asarray(x)) for x in jax.tree.leaves(state.params)])


def _train(step, state):
  losses = []
  for _ in range(STEPS):
    state, metrics = step(state)
    losses.append(float(metrics["loss"]))
  return state, losses


def test_eight_devices_are_simulated():
  assert jax.device_count() == 8


@pytest.mark.parametrize(("data", "model", "model_name"), [
    (8, 1, "transformer"), (4, 2, "transformer"), (8, 1, "lstm"), (2, 4, "transformer")])
def test_sharded_steps_equal_single_device(data, model, model_name):
  program = _program(model_name)
  single_state, single_losses = _train(jax.jit(program.train_step), jax.jit(program.init)(0))

  mesh = shd.make_mesh(shd.MeshSpec(data=data, model=model))
  fns = shd.shard_program(program, mesh)
  state = fns.init(0)
  if model > 1:  # the heads really are split over the model axis
    qkv = state.params["blocks"][0]["attention"]["qkv_kernel"]
    qkv = qkv[...] if hasattr(qkv, "get_value") else qkv
    # [D, K, G + 2, H]: split over the key/value heads, each with its query heads.
    assert qkv.sharding.spec == jax.sharding.PartitionSpec(None, "model", None, None)
    assert qkv.addressable_shards[0].data.shape[1] == qkv.shape[1] // model
  state, losses = _train(fns.train_step, state)
  np.testing.assert_allclose(losses, single_losses, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(_param_vector(state), _param_vector(single_state), atol=1e-5)
  single_eval = jax.jit(program.evaluate)(single_state)
  sharded_eval = fns.evaluate(state)
  np.testing.assert_allclose(sharded_eval["accuracy"], single_eval["accuracy"], atol=1e-6)


def test_batch_is_split_over_data():
  program = _program()
  mesh = shd.make_mesh(shd.MeshSpec(data=-1))
  sampled = jax.jit(shd.constrain_batches(program.task, shd.batch_sharding(mesh)).sample,
                    static_argnums=1)(jax.random.key(0), 16)
  assert sampled.inputs.addressable_shards[0].data.shape == (2, program.task.seq_len)
  np.testing.assert_array_equal(sampled.inputs, program.task.sample(jax.random.key(0), 16).inputs)


def test_checkpoint_restores_onto_another_mesh(tmp_path):
  from attn_jax.training import Checkpointer

  program = _program()
  fns_a = shd.shard_program(program, shd.make_mesh(shd.MeshSpec(data=4, model=2)))
  state_a, _ = _train(fns_a.train_step, fns_a.init(0))
  checkpointer = Checkpointer(str(tmp_path / "ckpt"))
  checkpointer.save(STEPS, state_a)

  fns_b = shd.shard_program(program, shd.make_mesh(shd.MeshSpec(data=2, model=4)))
  like = fns_b.init(1)
  restored = checkpointer.restore(STEPS, like)
  for got, want, target in zip(jax.tree.leaves(restored), jax.tree.leaves(state_a),
                               jax.tree.leaves(fns_b.shardings), strict=True):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    assert got.sharding.is_equivalent_to(target, got.ndim)
  # Training goes on from the restored state on the new mesh.
  state_b, metrics = fns_b.train_step(restored)
  assert np.isfinite(float(metrics["loss"])) and int(state_b.step) == STEPS + 1
  checkpointer.close()


def test_indivisible_batch_or_heads_rejected():
  mesh = shd.make_mesh(shd.MeshSpec(data=4, model=2))
  with pytest.raises(ValueError, match=r"batch_size \(6\).*data axis \(4\)"):
    shd.check_divisible(mesh, batch_size=6, num_heads=4, num_kv_heads=4, d_ff=32)
  with pytest.raises(ValueError, match=r"num_heads \(3\).*model axis \(2\)"):
    shd.check_divisible(mesh, batch_size=8, num_heads=3, num_kv_heads=3, d_ff=32)
  with pytest.raises(ValueError, match="devices"):
    shd.make_mesh(shd.MeshSpec(data=3, model=2))
  with pytest.raises(ValueError, match="-1"):
    shd.MeshSpec(data=-1, model=-1)
  assert shd.make_mesh(shd.MeshSpec(data=-1, model=2)).shape["data"] == 4


_COLLECTIVE = re.compile(
    r"= (\([^=]*\)|\S+) (all-reduce|all-gather|all-to-all|collective-permute|reduce-scatter)"
    r"(-start)?\(")
_FLOAT_SHAPE = re.compile(r"(?:f16|bf16|f32|f64)\[([0-9,]*)\]")


def _float_collectives(hlo: str) -> list[tuple[str, tuple[int, ...]]]:
  """(op, shape) of every floating-point collective in compiled HLO text (one per tuple element).
  Integer ones move the sampled batch's indices, not activations."""
  found = []
  for result, op, _ in _COLLECTIVE.findall(hlo):
    for dims in _FLOAT_SHAPE.findall(result):
      found.append((op, tuple(int(d) for d in dims.split(",") if d)))
  return found


@pytest.mark.parametrize(("data", "model"), [(4, 2), (2, 4)])
def test_head_parallel_step_exchanges_no_attention_activations(data, model):
  """Each model shard holds whole key/value groups with their query heads, so between the QKV
  projection and the output projection nothing crosses devices: the step's collectives carry
  model activations [B/data, L, D] (the Megatron all-reduces), parameter gradients and scalars."""
  task = make_task(TASK)
  spec = model_spec("transformer", d_model=32, num_heads=8, d_ff=64, num_layers=1)
  program = Program(lambda rngs: make_model(spec, vocab_size=task.vocab_size,
                                            max_len=task.seq_len, rngs=rngs),
                    task, TrainConfig(num_steps=STEPS, batch_size=16, warmup_steps=1))
  mesh = shd.make_mesh(shd.MeshSpec(data=data, model=model))
  fns = shd.shard_program(program, mesh)
  state = fns.init(0)
  hlo = fns.train_step.lower(state).compile().as_text()
  local = lambda x: tuple(x.addressable_shards[0].data.shape)
  allowed = {(16 // data, task.seq_len, 32)} | {local(x) for x in jax.tree.leaves(state.params)}
  collectives = _float_collectives(hlo)
  assert collectives, "expected the Megatron all-reduces"
  stray = [(op, shape) for op, shape in collectives if len(shape) > 1 and shape not in allowed]
  assert not stray, stray
  assert {op for op, _ in collectives} == {"all-reduce"}


def test_train_on_a_mesh_validates_and_evaluates_like_one_device():
  """`train(..., mesh=)`: the validation stream (early stopping) and the held-out evaluation run
  through the sharded program and give the single-device numbers."""
  import dataclasses

  from attn_jax.training import train

  program = _program()
  program = dataclasses.replace(program, config=dataclasses.replace(
      program.config, eval_every=1, eval_batches=2, log_every=1))
  seen = {"single": [], "mesh": []}
  single = train(program, 0, on_eval=lambda step, m: seen["single"].append(m["accuracy"]))
  sharded = train(program, 0, mesh=shd.make_mesh(shd.MeshSpec(data=4, model=2)),
                  on_eval=lambda step, m: seen["mesh"].append(m["accuracy"]))
  assert len(seen["mesh"]) == STEPS
  np.testing.assert_allclose(seen["mesh"], seen["single"], atol=1e-6)
  np.testing.assert_allclose(sharded.eval_metrics["accuracy"], single.eval_metrics["accuracy"],
                             atol=1e-6)
