"""One model on the copying-memory task (Arjovsky, Shah & Bengio 2016).

python -m experiments.run --config=configs/copy_memory.py --workdir=runs/copy \
    --config.model=lstm --config.task.delay=200
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
  config.task.name = "copy_memory"
  # Blanks-plus-delimiter between the 10 symbols and their recall; L = delay + 20.
  config.task.delay = 100
  # Share of the training loss on the 10 recall positions (the rest on the blanks).
  config.task.recall_weight = 0.9
  common.model_sections(config)
  # The settings of the headline sweep (configs/long_range.py; docs/experiments.md says why).
  config.transformer.d_model = 32
  config.transformer.num_layers = 1
  config.transformer.num_heads = 2
  config.transformer.d_ff = 64
  config.transformer.positional = "sinusoidal"
  config.lstm_attention.attention_hidden = 4
  config.lstm_attention.attention_implementation = "reference"
  common.train_section(config, num_steps=300, batch_size=8, learning_rate=1e-2)
  common.mesh_section(config)
  return config
