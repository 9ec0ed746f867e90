"""Train one model on one task from a config file.

python -m experiments.run --config=configs/copy_memory.py --workdir=runs/copy [--config.FIELD=V]

Writes DIR/metrics.jsonl (one JSON object per logged step), DIR/result.json, orbax checkpoints
under DIR/checkpoints and, beside them, DIR/settings.json (what the checkpoints were trained
with). Run again on the same DIR, it resumes from the latest checkpoint, but only with the same
settings: a changed field (a learning rate, a model size, the seed...) stops it with an error
naming the fields, unless ``--allow_changed_settings`` is given.
"""

import json
import os

from absl import app, flags, logging
from ml_collections import config_flags

from experiments import cpu_flags, reporting, settings

FLAGS = flags.FLAGS


def _define_flags() -> None:
  # Defined only when run as a program, so that tests can import this module.
  config_flags.DEFINE_config_file("config", None, "Path to a config file.", lock_config=True)
  flags.DEFINE_string("workdir", None, "Output directory.")
  flags.DEFINE_bool("allow_changed_settings", False,
                    "Resume from DIR's checkpoint even if it was trained with other settings.")
  flags.mark_flags_as_required(["config", "workdir"])


class SettingsChangedError(settings.ConfigError):
  """A resume onto checkpoints that were trained with other settings."""


def _check_resume(settings_path: str, current: dict, allow_changed: bool) -> list[str]:
  """The differences between the saved settings and ``current`` (raises unless allowed)."""
  if not os.path.exists(settings_path):
    changed = [f"no {os.path.basename(settings_path)} beside the checkpoints: their settings "
               "are unknown"]
  else:
    with open(settings_path) as f:
      changed = settings.differences(json.load(f), current, settings.REPORTING_FIELDS)
  if changed and not allow_changed:
    raise SettingsChangedError(
        f"{os.path.dirname(settings_path)} holds checkpoints trained with other settings; "
        f"differing: {'; '.join(changed)}. Use another --workdir, or pass "
        "--allow_changed_settings to resume from them anyway.")
  if changed:
    logging.warning("resuming with changed settings: %s", "; ".join(changed))
  return changed


def run(config, workdir: str, *, progress: bool = True,
        allow_changed_settings: bool = False) -> dict:
  """Trains the run ``config`` describes in ``workdir``; returns the result.json dict.

  Raises `SettingsChangedError` if ``workdir`` holds checkpoints of other settings (see the
  module docstring), unless ``allow_changed_settings``."""
  import jax

  from attn_jax.training import Checkpointer, train
  from attn_jax.training import sharding as shd

  run_settings = settings.run_settings(config)  # every check before anything compiles
  if run_settings.distributed:
    shd.initialize_distributed(**run_settings.cluster)
  mesh = None
  if (run_settings.mesh.data, run_settings.mesh.model) != (1, 1):
    mesh = shd.make_mesh(run_settings.mesh)
    spec = run_settings.model_spec
    shd.check_divisible(
        mesh, batch_size=run_settings.train.batch_size, num_heads=getattr(spec, "num_heads", None),
        num_kv_heads=getattr(spec, "num_heads", None), d_ff=getattr(spec, "d_ff", None))
  task = run_settings.task()
  program = run_settings.program(task)
  writer = jax.process_index() == 0  # one process writes logs; all take part in checkpoints
  os.makedirs(workdir, exist_ok=True)
  checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"))
  metrics_path = os.path.join(workdir, "metrics.jsonl")
  resume_step = checkpointer.latest_step() or 0
  settings_path = os.path.join(workdir, "settings.json")
  current = run_settings.to_dict()
  try:
    changed = _check_resume(settings_path, current, allow_changed_settings) if resume_step else []
  except SettingsChangedError:
    checkpointer.close()
    raise
  if writer:
    with open(settings_path, "w") as f:
      json.dump(current, f, indent=2)
    reporting.truncate_jsonl(metrics_path, resume_step)  # drop lines past the checkpoint
  bar = reporting.ProgressBar(run_settings.train.num_steps, resume_step,
                              f"{run_settings.model} {task.name} d={task.distance}",
                              enabled=progress and writer)

  def on_log(step, metrics):
    bar.update(step, metrics)
    if writer:
      reporting.append_jsonl(metrics_path, {"step": step, "split": "train", **metrics})

  def on_eval(step, metrics):
    if writer:
      reporting.append_jsonl(metrics_path, {"step": step, "split": "valid", **metrics})

  try:
    result = train(program, run_settings.seed, checkpointer=checkpointer, on_log=on_log,
                   on_eval=on_eval, mesh=mesh)
  finally:
    bar.close()
    checkpointer.close()
  summary = {
      "task": task.name, "model": run_settings.model, "distance": task.distance,
      "seed": run_settings.seed, "params": result.num_params,
      "steps": result.steps, "max_steps": run_settings.train.num_steps,
      "wall_s": round(result.wall_s, 2), "compile_s": round(result.compile_s, 2),
      "train_s": round(result.train_s, 2), "resumed_from": result.start_step,
      "metrics": result.eval_metrics,
      "reference": {"chance_accuracy": task.chance_accuracy, **task.reference},
  }
  if changed:
    summary["settings_changed_on_resume"] = changed
  if writer:
    # The held-out evaluation of the final state, last in the log (split "eval").
    reporting.append_jsonl(metrics_path, {"step": result.steps, "split": "eval",
                                          **result.eval_metrics})
    with open(os.path.join(workdir, "result.json"), "w") as f:
      json.dump(summary, f, indent=2)
  return summary


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  cpu_flags.use_fast_cpu_compile()  # before the first computation
  try:
    summary = run(FLAGS.config, FLAGS.workdir,
                  allow_changed_settings=FLAGS.allow_changed_settings)
  except settings.ConfigError as e:
    raise app.UsageError(str(e)) from e
  print(json.dumps(summary["metrics"], indent=2))


if __name__ == "__main__":
  _define_flags()
  app.run(main)
