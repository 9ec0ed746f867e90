"""The headline sweep at paper size, for one GPU.

python -m experiments.sweep --config=configs/long_range_gpu.py --workdir=runs/long_range_gpu

Copying memory at the delays of Arjovsky et al. 2016 and beyond (Bai et al. 2018 report T = 1000),
MQAR at Zoology's Figure 2 sizes (V = 8192, pairs growing with length), three seeds per setting
trained as one vmapped program, wider models and longer training than the CPU default.
Not run as part of this repository's results (no GPU was available); every field validates.
"""

import ml_collections

from configs import long_range


def get_config() -> ml_collections.ConfigDict:
  config = long_range.get_config()
  # Three seeds per configuration, vmapped into one program each.
  config.seeds = (0, 1, 2)
  # One process drives the one GPU.
  config.workers = 1
  config.attention_map_delay = 1000
  # Paper-sized models: the Transformer is wider, the LSTMs as wide as Arjovsky et al.'s.
  config.lstm.hidden_size = 256
  config.lstm_attention.hidden_size = 256
  config.lstm_attention.attention_hidden = 64
  # The chunked kernel never holds [B, L, L, attention_hidden] (64 GiB at L = 2020).
  config.lstm_attention.attention_implementation = "chunked"
  config.train.num_steps = 3000
  config.train.batch_size = 64
  config.train.learning_rate = 3e-3
  config.train.warmup_steps = 100
  config.train.log_every = 100

  config.copy_memory.delays = (100, 200, 500, 1000, 2000)
  config.copy_memory.transformer.d_model = 64
  config.copy_memory.transformer.num_heads = 4
  config.copy_memory.transformer.d_ff = 256

  # Zoology Figure 2: V = 8192 and (L, N) in (64, 4), (128, 8), (256, 16), (512, 64).
  config.mqar.seq_lens = (64, 128, 256, 512)
  config.mqar.num_pairs = (4, 8, 16, 64)
  config.mqar.vocab_size = 8192
  config.mqar.train.num_steps = 10000
  config.mqar.train.batch_size = 64
  config.mqar.train.learning_rate = 1e-3
  config.mqar.train.warmup_steps = 500
  config.mqar.transformer.d_model = 128
  config.mqar.transformer.num_heads = 4
  config.mqar.transformer.d_ff = 256

  config.control.task.vocab_size = 64
  config.control.train = ml_collections.ConfigDict(config.mqar.train.to_dict())
  config.control.train.num_steps = 3000
  config.control.transformer = ml_collections.ConfigDict(config.mqar.transformer.to_dict())
  return config
