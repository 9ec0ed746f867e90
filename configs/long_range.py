"""The headline sweep: transformer, LSTM and LSTM+attention on copy_memory and mqar.

python -m experiments.sweep --config=configs/long_range.py --workdir=runs/long_range

Sized to finish in about 10 minutes on 2 CPU cores. Every model gets the same budget: the same
steps, batch size, schedule and peak learning rate on each task.
"""

import ml_collections

from configs import common


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  # The models compared, each on every task and distance.
  config.models = ("transformer", "lstm", "lstm_attention")
  # Seeds per configuration (several run as one vmapped program).
  config.seeds = (0,)
  # The copy_memory delay whose trained Transformer is drawn in attention_maps.png.
  config.attention_map_delay = 100
  common.model_sections(config)
  common.train_section(config, num_steps=300, batch_size=32, learning_rate=3e-3)
  config.train.checkpoint_every = 0

  # Copying memory (Arjovsky et al. 2016) over delays; L = delay + 20.
  config.copy_memory = ml_collections.ConfigDict()
  # Run this task.
  config.copy_memory.enabled = True
  # Delays swept.
  config.copy_memory.delays = (10, 100, 200, 500)
  # Share of the training loss on the 10 recall positions.
  config.copy_memory.recall_weight = 0.9
  # Overrides of `train` for this task.
  config.copy_memory.train = ml_collections.ConfigDict()

  # MQAR (Arora et al. 2023) over sequence lengths, with num_pairs[i] pairs at seq_lens[i].
  config.mqar = ml_collections.ConfigDict()
  # Run this task.
  config.mqar.enabled = True
  # Sequence lengths swept.
  config.mqar.seq_lens = (32, 64, 128)
  # Key-value pairs at each length.
  config.mqar.num_pairs = (4, 8, 16)
  # Vocabulary: keys from [1, V/2), values from [V/2, V).
  config.mqar.vocab_size = 64
  # Overrides of `train` for this task.
  config.mqar.train = ml_collections.ConfigDict()

  # The control is the copy_memory delay 10 above: short enough that an LSTM solves it, so an
  # LSTM failure at long delays is not a broken baseline.
  config.control = ml_collections.ConfigDict()
  # A separate control group (off: delay 10 of copy_memory plays that role).
  config.control.enabled = False
  return config
