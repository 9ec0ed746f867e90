"""Config validation: every bad config is rejected with a clear message before compiling."""

import pytest

from configs import copy_memory, long_range, mqar
from experiments import settings, sweep


def test_default_configs_validate():
  for module in (copy_memory, mqar):
    run = settings.run_settings(module.get_config())
    assert run.model == "transformer" and run.train.num_steps > 0
  runs = sweep.plan(long_range.get_config())
  models = {model for _, model, _ in runs}
  assert models == {"transformer", "lstm", "lstm_attention"}
  delays = {r.task_spec.delay for g, _, r in runs if g == "copy_memory"}
  assert max(delays) >= 500


@pytest.mark.parametrize(("edit", "message"), [
    (lambda c: setattr(c.task, "delay", -5), "delay must be an int >= 1"),
    (lambda c: setattr(c, "model", "gru"), "model must be one of"),
    (lambda c: setattr(c.transformer, "num_heads", 3), "must divide"),
    (lambda c: setattr(c.train, "learning_rate", -1.0), "learning_rate"),
    (lambda c: setattr(c.train, "warmup_steps", 10_000), "warmup_steps"),
    (lambda c: setattr(c.mesh, "data", 0), "mesh.data"),
    (lambda c: setattr(c, "seed", -1), "seed"),
])
def test_invalid_values_rejected(edit, message):
  config = copy_memory.get_config()
  edit(config)
  with pytest.raises(settings.ConfigError, match=message):
    settings.run_settings(config)


def test_unknown_keys_rejected():
  config = copy_memory.get_config()
  config.unlock()
  config.task.bogus = 3
  with pytest.raises(settings.ConfigError, match=r"task \(copy_memory\).bogus"):
    settings.run_settings(config)
  config = copy_memory.get_config()
  config.unlock()
  config.extra = 1
  with pytest.raises(settings.ConfigError, match="unknown top-level"):
    settings.run_settings(config)


def test_mqar_pairs_must_fit():
  config = mqar.get_config()
  config.task.num_pairs = 40  # 40 pairs + 40 queries cannot fit in 64 positions
  with pytest.raises(settings.ConfigError, match="invalid task"):
    settings.run_settings(config)


def test_locked_config_rejects_unknown_override():
  """config_flags overrides go through a locked ConfigDict: a misspelt field cannot slip in."""
  config = copy_memory.get_config()
  config.lock()
  with pytest.raises(AttributeError):
    config.task.dealy = 3


def test_sweep_task_sections_override_model_and_train_sections():
  runs = sweep.plan(long_range.get_config())
  transformer = {(group, r.task().distance): r for group, model, r in runs
                 if model == "transformer"}
  copy, mqar_run = transformer[("copy_memory", 500)], transformer[("mqar", 128)]
  assert not copy.model_spec.causal and copy.model_spec.positional == "sinusoidal"
  assert mqar_run.model_spec.causal and mqar_run.model_spec.positional == "rope"
  assert transformer[("control", 16)].model_spec.causal
  # Every model gets the same budget on a task.
  budgets = {(group, (r.train.num_steps, r.train.batch_size, r.train.learning_rate))
             for group, _, r in runs}
  assert len({g for g, _ in budgets}) == len(budgets) == 3


def test_sweep_rejects_bad_sections():
  config = long_range.get_config()
  config.mqar.num_pairs = (4, 4)  # three lengths, two pair counts
  with pytest.raises(settings.ConfigError, match="same length"):
    sweep.plan(config)
  config = long_range.get_config()
  config.copy_memory.transformer.num_heads = 3
  with pytest.raises(settings.ConfigError, match="must divide"):
    sweep.plan(config)
  config = long_range.get_config()
  config.models = ("transformer", "gru")
  with pytest.raises(settings.ConfigError, match="gru"):
    sweep.plan(config)
