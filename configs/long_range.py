"""The headline sweep: transformer, LSTM and LSTM+attention on copy_memory and mqar.

python -m experiments.sweep --config=configs/long_range.py --workdir=runs/long_range

Sized to finish in about 10 minutes on 2 CPU cores (docs/experiments.md has the measured time).
Settings belong to a task, not to a model: on each task every model gets the same steps, batch
size, schedule and peak learning rate. A task section may override `train` and any model section
(e.g. `mqar.transformer` over `transformer`). How the settings were chosen, and what they cost,
is in docs/experiments.md.
"""

import ml_collections

from configs import common


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  # The models compared, each on every task and distance.
  config.models = ("transformer", "lstm", "lstm_attention")
  # Seeds per configuration (several run as one vmapped program).
  config.seeds = (0,)
  # Processes the runs are spread over (one per CPU core).
  config.workers = 2
  # The copy_memory delay whose trained Transformer is drawn in attention_maps.png.
  config.attention_map_delay = 500
  common.model_sections(config)
  # LSTMs wider than the Transformer: more parameters than the model they are compared with.
  config.lstm.hidden_size = 128
  config.lstm_attention.hidden_size = 128
  # A narrow additive score keeps the [B, L, L, attention_hidden] tensor small at L = 520.
  config.lstm_attention.attention_hidden = 4
  # The reference path (one fused tensor) is faster than the chunked scan on CPU at these sizes.
  config.lstm_attention.attention_implementation = "reference"
  common.train_section(config, num_steps=300, batch_size=8, learning_rate=1e-2)
  # The sweep evaluates at the end only and keeps no checkpoints (each run takes seconds).
  config.train.checkpoint_every = 0
  config.train.log_every = 50
  config.train.warmup_steps = 20

  # Copying memory (Arjovsky et al. 2016) over delays; L = delay + 20.
  config.copy_memory = ml_collections.ConfigDict()
  # Run this task.
  config.copy_memory.enabled = True
  # Delays swept (the distance the 10 symbols must be carried).
  config.copy_memory.delays = (50, 100, 200, 500)
  # Share of the training loss on the 10 recall positions (the rest on the blank targets).
  config.copy_memory.recall_weight = 0.9
  # Overrides of `train` for this task (none: the top-level section is the copy budget).
  config.copy_memory.train = ml_collections.ConfigDict()
  # One block, two heads, sinusoidal positions: recall is one lookup at a fixed offset, which
  # sinusoids express linearly (learned positions stall for some seeds at delay >= 200).
  config.copy_memory.transformer = ml_collections.ConfigDict()
  config.copy_memory.transformer.d_model = 32
  config.copy_memory.transformer.num_layers = 1
  config.copy_memory.transformer.num_heads = 2
  config.copy_memory.transformer.d_ff = 64
  config.copy_memory.transformer.positional = "sinusoidal"
  config.copy_memory.transformer.causal = False

  # MQAR (Arora et al. 2023) over sequence lengths, with num_pairs[i] pairs at seq_lens[i].
  config.mqar = ml_collections.ConfigDict()
  # Run this task.
  config.mqar.enabled = True
  # Sequence lengths swept (the queries sit anywhere after the pairs).
  config.mqar.seq_lens = (32, 64, 128)
  # Key-value pairs at each length.
  config.mqar.num_pairs = (4, 4, 4)
  # Vocabulary: 7 keys from [1, 8), 8 values from [8, 16).
  config.mqar.vocab_size = 16
  # MQAR has few supervised positions per sequence: more sequences per step, more steps.
  config.mqar.train = ml_collections.ConfigDict()
  config.mqar.train.num_steps = 800
  config.mqar.train.batch_size = 32
  config.mqar.train.learning_rate = 3e-3
  config.mqar.train.warmup_steps = 40
  # Two causal blocks with RoPE: a previous-token head, then an induction head (Olsson et al.
  # 2022). The bidirectional encoder stalls here: a head can read both neighbours of a key.
  config.mqar.transformer = ml_collections.ConfigDict()
  config.mqar.transformer.d_model = 32
  config.mqar.transformer.num_layers = 2
  config.mqar.transformer.num_heads = 2
  config.mqar.transformer.d_ff = 64
  config.mqar.transformer.positional = "rope"
  config.mqar.transformer.causal = True

  # The control: one key-value pair, so recall needs memory but no binding of many pairs. It is
  # known to be within an LSTM's reach, so an LSTM failure elsewhere is not a broken baseline.
  config.control = ml_collections.ConfigDict()
  # Run the control.
  config.control.enabled = True
  # The control's task section (as in configs/mqar.py).
  config.control.task = ml_collections.ConfigDict(
      {"name": "mqar", "seq_len": 16, "num_pairs": 1, "vocab_size": 16})
  # The MQAR budget and models.
  config.control.train = ml_collections.ConfigDict(config.mqar.train.to_dict())
  config.control.transformer = ml_collections.ConfigDict(config.mqar.transformer.to_dict())
  return config
