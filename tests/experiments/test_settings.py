"""Config validation: every bad config is rejected with a clear message before compiling."""

import pytest

from configs import copy_memory, long_range, long_range_gpu, mqar, mqar_zoology
from experiments import lr_search, settings
from experiments.plan import plan


def test_default_configs_validate():
  for module in (copy_memory, mqar):
    run = settings.run_settings(module.get_config())
    assert run.model == "transformer" and run.train.num_steps > 0
  runs = plan(long_range.get_config())
  assert {r.model for r in runs} == {"transformer", "lstm", "lstm_attention"}
  delays = {r.distance for r in runs if r.group == "copy_memory"}
  assert min(delays) <= 20 and max(delays) >= 500
  assert all(len(r.seeds) >= 3 for r in runs)
  for module in (long_range_gpu, mqar_zoology):
    assert plan(module.get_config())
  assert lr_search.search_plan(long_range.get_config())


@pytest.mark.parametrize(("edit", "message"), [
    (lambda c: setattr(c.task, "delay", -5), "delay must be an int >= 1"),
    (lambda c: setattr(c, "model", "gru"), "model must be one of"),
    (lambda c: setattr(c.transformer, "num_heads", 3), "must divide"),
    (lambda c: setattr(c.train, "learning_rate", -1.0), "learning_rate"),
    (lambda c: setattr(c.train, "warmup_steps", -1), "warmup_steps"),
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


def test_warmup_that_does_not_fit_is_clamped():
  config = copy_memory.get_config()
  config.train.num_steps = 5
  assert settings.run_settings(config).train.warmup_steps == 0
  config.train.num_steps = 40
  config.train.warmup_steps = 100
  assert settings.run_settings(config).train.warmup_steps == 4


def test_sweep_task_sections_override_model_and_train_sections():
  config = long_range.get_config()
  runs = plan(config)
  transformer = {(r.group, r.distance): r.settings for r in runs if r.model == "transformer"}
  longest_mqar = max(config.mqar.seq_lens)
  copy, mqar_run = transformer[("copy_memory", 500)], transformer[("mqar", longest_mqar)]
  assert not copy.model_spec.causal and copy.model_spec.positional == "sinusoidal"
  assert mqar_run.model_spec.causal and mqar_run.model_spec.positional == "rope"
  assert transformer[("control", 16)].model_spec.causal
  # Every model gets the same budget (steps, batch, schedule, stop) at every distance of a
  # group; only the peak learning rate is the model's own, from its group's search.
  for group in ("copy_memory", "mqar", "control"):
    budgets = {(r.settings.train.num_steps, r.settings.train.batch_size,
                r.settings.train.warmup_steps, r.settings.train.end_lr_fraction,
                r.settings.train.stop_accuracy) for r in runs if r.group == group}
    assert len(budgets) == 1, group
    for r in runs:
      if r.group == group:
        assert r.settings.train.learning_rate == config[group].learning_rates[r.model]


def test_sweep_rejects_bad_sections():
  config = long_range.get_config()
  config.mqar.num_pairs = (4, 4)  # three lengths, two pair counts
  with pytest.raises(settings.ConfigError, match="same length"):
    plan(config)
  config = long_range.get_config()
  config.copy_memory.transformer.num_heads = 3
  with pytest.raises(settings.ConfigError, match="must divide"):
    plan(config)
  config = long_range.get_config()
  config.models = ("transformer", "gru")
  with pytest.raises(settings.ConfigError, match="gru"):
    plan(config)


def test_settings_keys_change_with_any_setting_and_only_then():
  config = long_range.get_config()
  keys = {r.name: r.key for r in plan(config)}
  assert keys == {r.name: r.key for r in plan(long_range.get_config())}
  config.mqar.learning_rates.lstm = 0.123
  changed = {r.name for r in plan(config) if r.key != keys[r.name]}
  assert changed == {f"mqar_lstm_{length}" for length in config.mqar.seq_lens}
  config = long_range.get_config()
  config.seeds = (7, 8, 9)
  assert all(r.key != keys[r.name] for r in plan(config))


def test_sweep_rejects_bad_seeds_and_missing_rates():
  config = long_range.get_config()
  config.seeds = (1, 1, 2)
  with pytest.raises(settings.ConfigError, match="distinct"):
    plan(config)
  config = long_range.get_config()
  del config.copy_memory.learning_rates["lstm"]
  with pytest.raises(settings.ConfigError, match="learning_rates has no entry"):
    plan(config)


def test_settings_differences_name_the_fields():
  base = settings.run_settings(copy_memory.get_config()).to_dict()
  config = copy_memory.get_config()
  config.train.learning_rate = 0.5
  config.transformer.d_model = 2 * base["transformer"]["d_model"]
  config.train.log_every = 7  # reporting only: not a difference
  changed = settings.differences(base, settings.run_settings(config).to_dict(),
                                 settings.REPORTING_FIELDS)
  assert changed == [
      f"train.learning_rate: {base['train']['learning_rate']!r} -> 0.5",
      f"transformer.d_model: {base['transformer']['d_model']} -> {config.transformer.d_model}"]
