"""Runs `multidevice_checks.py` in its own pytest process on 8 simulated CPU devices.

XLA fixes the device count when jax initialises its backend, so these checks cannot share a
process with the rest of the suite; one subprocess keeps the README's single test command.
"""

import os
import pathlib
import subprocess
import sys

CHECKS = pathlib.Path(__file__).with_name("multidevice_checks.py")


def test_multidevice_checks_pass_on_eight_simulated_devices():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu")
  result = subprocess.run(
      [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
       str(CHECKS)], env=env, capture_output=True, text=True, timeout=900,
      cwd=CHECKS.parents[2])
  assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
  assert " passed" in result.stdout and " failed" not in result.stdout
