"""Smoke tests of the command-line entry points on shrunk configs."""

import json
import os
import shutil
import subprocess
import sys

import ml_collections
import pytest

from configs import copy_memory, long_range
from experiments import headline, lr_search, reporting, sweep
from experiments import run as run_lib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _tiny_run_config(num_steps=6):
  config = copy_memory.get_config()
  config.task.delay = 5
  config.transformer.d_model = 8
  config.transformer.num_heads = 2
  config.transformer.d_ff = 16
  config.transformer.num_layers = 1
  config.train.num_steps = num_steps
  config.train.batch_size = 4
  config.train.warmup_steps = 1
  config.train.log_every = 2
  config.train.checkpoint_every = 3
  config.train.eval_batches = 1
  return config


def test_run_writes_files_and_resumes(tmp_path):
  workdir = str(tmp_path / "run")
  first = run_lib.run(_tiny_run_config(), workdir, progress=False)
  assert set(os.listdir(workdir)) >= {"metrics.jsonl", "result.json", "checkpoints"}
  with open(os.path.join(workdir, "result.json")) as f:
    result = json.load(f)
  assert result["steps"] == 6 and result["task"] == "copy_memory" and result["distance"] == 5
  assert 0.0 <= result["metrics"]["accuracy"] <= 1.0 and result["params"] > 0
  lines = reporting.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  assert [r["step"] for r in lines if r["split"] == "train"] == [2, 4, 6]
  # Rerun on the same workdir: resumes from the final checkpoint, same result, no duplicates.
  again = run_lib.run(_tiny_run_config(), workdir, progress=False)
  assert again["resumed_from"] == 6 and again["metrics"] == first["metrics"]
  lines = reporting.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  assert [r["step"] for r in lines if r["split"] == "train"] == [2, 4, 6]


def test_run_resumes_mid_way_to_the_same_end(tmp_path):
  """A run killed after its step-3 checkpoint, rerun: the same metrics as one go."""
  straight = run_lib.run(_tiny_run_config(), str(tmp_path / "a"), progress=False)
  interrupted = str(tmp_path / "b")
  run_lib.run(_tiny_run_config(), interrupted, progress=False)
  # Make it as if the process died between the checkpoints at steps 3 and 6.
  shutil.rmtree(os.path.join(interrupted, "checkpoints", "6"))
  os.remove(os.path.join(interrupted, "result.json"))
  resumed = run_lib.run(_tiny_run_config(), interrupted, progress=False)
  assert resumed["resumed_from"] == 3
  assert resumed["metrics"] == straight["metrics"]


@pytest.mark.parametrize("bad", ["--config.task.delay=-1", "--config.model=gru"])
def test_cli_rejects_bad_config(tmp_path, bad):
  result = subprocess.run(
      [sys.executable, "-m", "experiments.run", "--config=configs/copy_memory.py",
       f"--workdir={tmp_path}", bad], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode != 0
  assert "delay" in result.stderr or "model must be one of" in result.stderr
  assert not os.path.exists(tmp_path / "result.json")


def _tiny_sweep_config():
  config = long_range.get_config()
  config.workers = 1
  config.seeds = (0, 1)
  # Two models keep the test short; every model x task trains in tests/training/test_program.py.
  config.models = ("transformer", "lstm")
  config.copy_memory.delays = (5,)
  config.mqar.seq_lens = (16,)
  config.mqar.num_pairs = (2,)
  config.control.task.seq_len = 8
  config.attention_map_delay = 5
  config.train.eval_batches = 1
  config.train.eval_every = 1
  config.train.log_every = 1
  for group in ("copy_memory", "mqar", "control"):
    config[group].train.num_steps = 2
    config[group].train.warmup_steps = 1
    config[group].train.batch_size = 4
  for section in (config.transformer, config.copy_memory.transformer, config.mqar.transformer,
                  config.control.transformer):
    section.d_model, section.num_heads, section.d_ff, section.num_layers = 8, 2, 8, 1
  config.lstm.hidden_size = 8
  config.lstm_attention.hidden_size = 8
  return config


def test_sweep_writes_results_in_the_contract_schema(tmp_path):
  config = _tiny_sweep_config()
  results = sweep.sweep(config, str(tmp_path))
  for name in ("results.json", "results.md", "accuracy_vs_distance.png", "attention_maps.png",
               "learning_curves.png"):
    assert os.path.getsize(tmp_path / name) > 0
  with open(tmp_path / "results.json") as f:
    on_disk = json.load(f)
  assert on_disk["runs"] == results["runs"] and len(on_disk["runs"]) == 12  # 6 configs x 2 seeds
  for run in on_disk["runs"]:
    assert {"task", "model", "distance", "seed", "params", "steps", "wall_s",
            "metrics", "compile_s", "train_s"} <= set(run)
    assert {"accuracy", "loss"} <= set(run["metrics"])
    assert run["curve"]["train_step"] == [1, 2] and len(run["curve"]["valid_accuracy"]) == 2
  assert {(r["group"], r["task"], r["distance"]) for r in on_disk["runs"]} == {
      ("copy_memory", "copy_memory", 5), ("mqar", "mqar", 16), ("control", "mqar", 8)}
  assert sorted({r["seed"] for r in on_disk["runs"]}) == [0, 1]
  assert on_disk["total_wall_s"] > 0 and on_disk["runs_trained"] == 6
  with open(tmp_path / "results.md") as f:
    table = f.read()
  assert table.count("| transformer |") == table.count("| lstm |") == 3
  assert "memoryless loss" in table and "value set 0.500" in table and "/2 |" in table
  summary = headline.headline(on_disk)
  assert "copying memory, delay 5" in summary and "MQAR, length 16" in summary
  # Rerun on the same workdir: every run is kept, nothing retrains, same results.
  again = sweep.sweep(config, str(tmp_path))
  assert again["runs"] == results["runs"] and again["runs_trained"] == 0


def test_sweep_retrains_exactly_the_runs_whose_settings_changed(tmp_path):
  config = _tiny_sweep_config()
  config.models = ("lstm",)
  config.mqar.enabled = config.control.enabled = False
  config.copy_memory.delays = (3, 5)
  first = sweep.sweep(config, str(tmp_path))
  assert first["runs_trained"] == 2
  config.copy_memory.train.num_steps = 3  # the budget of every copy run
  second = sweep.sweep(config, str(tmp_path))
  assert second["runs_trained"] == 2 and {r["steps"] for r in second["runs"]} == {3}
  config.lstm.hidden_size = 4  # a model size
  assert sweep.sweep(config, str(tmp_path))["runs_trained"] == 2
  config.seeds = (0, 2)  # other seeds
  third = sweep.sweep(config, str(tmp_path))
  assert third["runs_trained"] == 2 and {r["seed"] for r in third["runs"]} == {0, 2}
  # One delay changes: only that run retrains, the other is reused as it was.
  config.copy_memory.delays = (3, 6)
  fourth = sweep.sweep(config, str(tmp_path))
  assert fourth["runs_trained"] == 1 and fourth["runs_kept"] == 1
  kept = [r for r in fourth["runs"] if r["distance"] == 3]
  assert kept == [r for r in third["runs"] if r["distance"] == 3]


def test_run_refuses_to_resume_on_changed_settings(tmp_path):
  workdir = str(tmp_path / "run")
  run_lib.run(_tiny_run_config(), workdir, progress=False)
  with open(os.path.join(workdir, "settings.json")) as f:
    assert json.load(f)["train"]["num_steps"] == 6
  changed = _tiny_run_config()
  changed.train.learning_rate = 0.5
  changed.transformer.d_ff = 32
  with pytest.raises(run_lib.SettingsChangedError) as error:
    run_lib.run(changed, workdir, progress=False)
  assert "train.learning_rate" in str(error.value) and "transformer.d_ff" in str(error.value)
  assert "--allow_changed_settings" in str(error.value)
  # Reporting fields are not settings: more frequent logging resumes as before.
  relogged = _tiny_run_config()
  relogged.train.log_every = 1
  assert run_lib.run(relogged, workdir, progress=False)["resumed_from"] == 6
  # The override flag resumes anyway (here a new learning rate: same shapes), and says what
  # changed.
  changed.transformer.d_ff = _tiny_run_config().transformer.d_ff
  forced = run_lib.run(changed, workdir, progress=False, allow_changed_settings=True)
  assert forced["resumed_from"] == 6
  assert any("learning_rate" in c for c in forced["settings_changed_on_resume"])


def test_cli_refuses_changed_settings_and_honours_the_override(tmp_path):
  base = [sys.executable, "-m", "experiments.run", "--config=configs/copy_memory.py",
          f"--workdir={tmp_path}", "--config.train.num_steps=2", "--config.task.delay=3",
          "--config.train.batch_size=2", "--config.train.eval_batches=1"]
  assert subprocess.run(base, cwd=ROOT, capture_output=True, text=True,
                        timeout=300).returncode == 0
  refused = subprocess.run(base + ["--config.seed=4"], cwd=ROOT, capture_output=True, text=True,
                           timeout=300)
  assert refused.returncode != 0 and "seed: 0 -> 4" in refused.stderr
  forced = subprocess.run(base + ["--config.seed=4", "--allow_changed_settings"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
  assert forced.returncode == 0, forced.stderr


@pytest.mark.parametrize(("config_file", "num_steps"), [("copy_memory", 5), ("mqar", 1)])
def test_smoke_run_with_only_num_steps_overridden(tmp_path, config_file, num_steps):
  """The first thing a newcomer tries: the default config, a handful of steps, nothing else."""
  result = subprocess.run(
      [sys.executable, "-m", "experiments.run", f"--config=configs/{config_file}.py",
       f"--workdir={tmp_path}", f"--config.train.num_steps={num_steps}"],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr
  assert "warmup clamped" in result.stderr
  with open(tmp_path / "result.json") as f:
    assert json.load(f)["steps"] == num_steps


def test_lr_search_tries_every_rate_for_every_model_and_picks_one(tmp_path):
  config = _tiny_sweep_config()
  config.models = ("transformer", "lstm")
  config.lr_search.learning_rates = (1e-3, 1e-2)
  config.lr_search.seeds = (5, 6)
  config.lr_search.distances = ml_collections.ConfigDict({"copy_memory": (5,)})
  results = lr_search.lr_search(config, str(tmp_path))
  runs = results["runs"]
  assert {(r["model"], r["learning_rate"], r["seed"]) for r in runs} == {
      (m, lr, s) for m in ("transformer", "lstm") for lr in (1e-3, 1e-2) for s in (5, 6)}
  assert set(results["chosen"]["copy_memory"]) == {"transformer", "lstm"}
  assert all(v in (1e-3, 1e-2) for v in results["chosen"]["copy_memory"].values())
  with open(tmp_path / "lr_search.md") as f:
    table = f.read()
  assert table.count("| transformer |") == table.count("| lstm |") == 2
  assert "**yes**" in table
