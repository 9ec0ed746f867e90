"""The recall zoo end to end on a shrunk config: every mixer, MQAR and selective copying, the
record fields, the outputs, reuse of finished runs; and the learning-rate search's plan."""

import json
import os

import pytest

from configs import recall_zoo
from experiments import settings, sweep, zoo, zoo_search


def _tiny_config():
  config = recall_zoo.get_config()
  config.seeds = (3, 4)
  config.workers = 1
  config.model.d_model = 8
  config.model.chunk_size = 8
  config.sizes.transformer["values"] = (8,)
  config.sizes.sliding_window["values"] = (4,)
  config.sizes.based["values"] = (2,)
  config.sizes.linear_attention["values"] = (2,)
  config.sizes.gated_linear["values"] = (2,)
  config.sizes.lstm["values"] = (8,)
  config.mqar.seq_lens = (16,)
  config.mqar.num_pairs = (3,)
  config.mqar.vocab_size = 16
  config.selective_copy.context_len = 8
  config.selective_copy.num_tokens = 2
  config.train.num_steps = 4
  config.train.warmup_steps = 1
  config.train.eval_every = 2
  config.train.eval_batches = 1
  config.train.batch_size = 4
  return config


def test_zoo_end_to_end_writes_the_record_fields(tmp_path):
  config = _tiny_config()
  results = sweep.sweep(config, str(tmp_path))
  runs = results["runs"]
  assert {r["model"] for r in runs} == set(zoo.ZOO_MODELS)
  assert {r["task"] for r in runs} == {"mqar", "selective_copy"}
  # 6 configurations x 2 tasks x 2 seeds.
  assert len(runs) == 6 * 2 * 2
  for r in runs:
    for field in ("task", "model", "distance", "seed", "params", "steps", "wall_s",
                  "state_size"):
      assert field in r, field
    assert {"accuracy", "loss"} <= set(r["metrics"])
    assert 0.0 <= r["metrics"]["accuracy"] <= 1.0
    assert isinstance(r["state_size"], int) and r["state_size"] > 0
    assert ("num_pairs" in r) == (r["task"] == "mqar")
  assert {r["seed"] for r in runs} == {3, 4}
  by = {(r["task"], r["model"]): r["state_size"] for r in runs}
  conv = 3 * 8  # the short convolution's last 3 inputs, one layer of width 8
  # Attention keeps the keys and values of all 16 positions, the window of 4, the LSTM h and c.
  assert by[("mqar", "transformer")] == 2 * 16 * 8 + conv
  assert by[("mqar", "sliding_window")] == 2 * 4 * 8 + conv
  assert by[("mqar", "lstm")] == by[("selective_copy", "lstm")] == 2 * 8 + conv
  with open(tmp_path / "results.json") as f:
    assert json.load(f)["runs"] == runs
  for name in ("results.md", "state_size.png", "learning_curves.png"):
    assert os.path.getsize(tmp_path / name) > 0
  # Rerun on the same directory: every run is kept.
  assert sweep.sweep(config, str(tmp_path))["runs_trained"] == 0
  # An interrupted zoo reports its finished runs only, and trains nothing.
  os.remove(tmp_path / "runs" / "selective_copy_lstm_10_d_model8.json")
  config.unlock()
  config.finished_only = True
  partial = sweep.sweep(config, str(tmp_path))
  assert partial["runs_trained"] == 0 and len(partial["runs"]) == len(runs) - 2


def test_zoo_config_is_validated():
  config = _tiny_config()
  config.unlock()
  config.sizes.lstm.field = "hidden"
  with pytest.raises(settings.ConfigError, match="hidden"):
    zoo.plan(config)
  config = _tiny_config()
  config.models = ("transformer", "mamba")
  with pytest.raises(settings.ConfigError, match="mamba"):
    zoo.plan(config)


def test_default_zoo_plan_and_search_plan():
  config = recall_zoo.get_config()
  runs = zoo.plan(config)
  fixed_state = [m for m in config.models if m != "transformer"]
  for model in fixed_state:
    assert len(config.sizes[model]["values"]) >= 3
  assert {r.distance for r in runs if r.group == "mqar"} == {64, 128, 256}
  assert len(config.seeds) >= 3
  # Same budget for every model of a task.
  for group in ("mqar", "selective_copy"):
    assert len({(r.settings.train.num_steps, r.settings.train.batch_size)
                for r in runs if r.group == group}) == 1
  search = zoo_search.search_plan(config)
  assert len(search) == len(config.models) * len(config.lr_search.learning_rates)
  assert {r.distance for r in search} == {128}
  assert not set(config.lr_search.seeds) & set(config.seeds)
