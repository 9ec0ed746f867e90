"""One model on multi-query associative recall (Arora et al. 2023, "Zoology").

python -m experiments.run --config=configs/mqar.py --workdir=runs/mqar \
    --config.task.seq_len=128 --config.task.num_pairs=8
"""

import ml_collections

from configs import common


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  # transformer | lstm | lstm_attention.
  config.model = "transformer"
  # Seed of parameters, data and dropout: a run is a function of (seed, step).
  config.seed = 0
  config.task = ml_collections.ConfigDict()
  # The task.
  config.task.name = "mqar"
  # Sequence length: key-value pairs first, then queries.
  config.task.seq_len = 64
  # Key-value pairs in the context (each queried once).
  config.task.num_pairs = 8
  # Keys come from [1, V/2), values from [V/2, V).
  config.task.vocab_size = 64
  common.model_sections(config)
  common.train_section(config, num_steps=600, batch_size=32, learning_rate=3e-3)
  common.mesh_section(config)
  return config
