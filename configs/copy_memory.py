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
  # Share of the training loss on the 10 recall positions (1.0: only they are trained).
  config.task.recall_weight = 1.0
  common.model_sections(config)
  # The settings of the headline sweep (configs/long_range.py; docs/experiments.md says why).
  config.transformer.d_model = 32
  config.transformer.num_layers = 1
  config.transformer.num_heads = 2
  config.transformer.d_ff = 64
  config.transformer.positional = "sinusoidal"
  config.lstm_attention.score = "dot"
  config.lstm_attention.attention_hidden = 16
  config.lstm_attention.attention_implementation = "reference"
  # The copy budget of the sweep; its learning rate is the Transformer's (the sweep's search
  # chose 5e-3 for both LSTMs: --config.train.learning_rate=5e-3 with --config.model=lstm).
  common.train_section(config, num_steps=1500, batch_size=16, learning_rate=1e-2)
  config.train.eval_every = 50
  config.train.stop_accuracy = 0.998
  common.mesh_section(config)
  return config
