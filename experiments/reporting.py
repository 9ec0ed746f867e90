"""Host-side reporting: JSON lines, the progress bar, tables."""

import json
import os
import time


def append_jsonl(path: str, record: dict) -> None:
  with open(path, "a") as f:
    f.write(json.dumps(record) + "\n")


def read_jsonl(path: str) -> list[dict]:
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def truncate_jsonl(path: str, last_step: int) -> None:
  """Keeps the records of steps <= last_step, except the final evaluation (split "eval"): a
  resumed run rewrites what came after, and evaluates its final state again."""
  kept = [r for r in read_jsonl(path)
          if r.get("step", 0) <= last_step and r.get("split") != "eval"]
  with open(path, "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in kept)


class ProgressBar:
  """A tqdm bar over training steps with ETA, loss and accuracy (no-op when disabled)."""

  def __init__(self, total: int, start: int, description: str, *, enabled: bool = True):
    self._bar = None
    self._last = start
    if enabled:
      from tqdm.auto import tqdm

      self._bar = tqdm(total=total, initial=start, desc=description, unit="step",
                       dynamic_ncols=True)
    self._started = time.perf_counter()

  def update(self, step: int, metrics: dict) -> None:
    if self._bar is None:
      return
    self._bar.update(step - self._last)
    self._last = step
    loss, acc = metrics.get("loss"), metrics.get("accuracy")
    fmt = lambda x: f"{x:.4f}" if isinstance(x, float) else str(x)
    self._bar.set_postfix(loss=fmt(loss), acc=fmt(acc), refresh=False)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
