"""One model on multi-query associative recall (Arora et al. 2023, "Zoology").

python -m experiments.run --config=configs/mqar.py --workdir=runs/mqar \
    --config.task.seq_len=128 --config.model=lstm
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
  config.task.num_pairs = 4
  # Keys come from [1, V/2), values from [V/2, V).
  config.task.vocab_size = 16
  # Random non-value tokens at the non-query positions (Zoology's random_non_queries).
  config.task.distractors = True
  common.model_sections(config)
  # The settings of the headline sweep (configs/long_range.py; docs/experiments.md says why):
  # two causal blocks with RoPE, where the bidirectional encoder stalls.
  config.transformer.d_model = 32
  config.transformer.num_layers = 2
  config.transformer.num_heads = 2
  config.transformer.d_ff = 64
  config.transformer.positional = "rope"
  config.transformer.causal = True
  config.lstm_attention.score = "dot"
  config.lstm_attention.attention_hidden = 16
  config.lstm_attention.attention_implementation = "reference"
  # The MQAR budget of the sweep; its learning rate is the Transformer's and the LSTM's (the
  # sweep's search chose 1e-2 for LSTM + attention).
  common.train_section(config, num_steps=1000, batch_size=32, learning_rate=2.5e-3)
  config.train.eval_every = 50
  config.train.stop_accuracy = 0.998
  common.mesh_section(config)
  return config
