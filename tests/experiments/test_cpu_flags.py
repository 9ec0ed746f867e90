"""The CPU compile flags of the entry points."""

from experiments import cpu_flags


def test_flags_are_added_once_and_respect_the_user(monkeypatch):
  monkeypatch.setattr(cpu_flags.importlib.util, "find_spec", lambda name: None)
  monkeypatch.setenv("XLA_FLAGS", "--xla_foo=1")
  added = cpu_flags.use_fast_cpu_compile()
  assert "--xla_backend_optimization_level=1" in added
  flags = cpu_flags.os.environ["XLA_FLAGS"]
  assert flags.startswith("--xla_foo=1 ") and all(f in flags for f in added)
  assert cpu_flags.use_fast_cpu_compile() == []  # already there: nothing added twice
  monkeypatch.setenv("XLA_FLAGS", "--xla_backend_optimization_level=3")
  assert "--xla_backend_optimization_level=1" not in cpu_flags.use_fast_cpu_compile()
  assert "--xla_backend_optimization_level=3" in cpu_flags.os.environ["XLA_FLAGS"]


def test_no_flags_with_an_accelerator_plugin(monkeypatch):
  monkeypatch.setattr(cpu_flags.importlib.util, "find_spec",
                      lambda name: object() if name == "jax_cuda12_plugin" else None)
  monkeypatch.setenv("XLA_FLAGS", "")
  assert cpu_flags.use_fast_cpu_compile() == []
  assert cpu_flags.os.environ["XLA_FLAGS"] == ""
