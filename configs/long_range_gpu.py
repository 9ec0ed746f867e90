"""The headline sweep at paper size, for one GPU, under the protocol of configs/long_range.py.

python -m experiments.lr_search --config=configs/long_range_gpu.py --workdir=runs/lr_gpu
python -m experiments.sweep --config=configs/long_range_gpu.py --workdir=runs/long_range_gpu

Copying memory at the delays of Arjovsky et al. 2016 and beyond (Bai et al. 2018 report T = 1000),
MQAR at Zoology's Figure 2 sizes (V = 8192, pairs growing with length, random non-query tokens),
wider models and longer training than the CPU default. The protocol is the CPU sweep's: three
seeds per setting trained as one vmapped program, the same budget for every model at every
distance of a task, the same early stop, and each model's learning rate from the same search
(`lr_search` below). Not run for this repository's results (no GPU was available): the
``learning_rates`` here are the CPU search's choices, to be replaced by the output of the
`lr_search` command above before the sweep is reported.
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
  config.train.log_every = 100
  config.train.eval_every = 100

  config.copy_memory.delays = (10, 20, 50, 100, 200, 500, 1000, 2000)
  config.copy_memory.train.num_steps = 10000
  config.copy_memory.train.batch_size = 64
  config.copy_memory.train.warmup_steps = 200
  config.copy_memory.transformer.d_model = 64
  config.copy_memory.transformer.num_heads = 4
  config.copy_memory.transformer.d_ff = 256

  # Zoology Figure 2: V = 8192 and (L, N) in (64, 4), (128, 8), (256, 16), (512, 64).
  config.mqar.seq_lens = (64, 128, 256, 512)
  config.mqar.num_pairs = (4, 8, 16, 64)
  config.mqar.vocab_size = 8192
  config.mqar.distractors = True
  config.mqar.train.num_steps = 10000
  config.mqar.train.batch_size = 64
  config.mqar.train.warmup_steps = 500
  config.mqar.transformer.d_model = 128
  config.mqar.transformer.num_heads = 4
  config.mqar.transformer.d_ff = 256

  config.control.task.vocab_size = 64
  config.control.train = ml_collections.ConfigDict(config.mqar.train.to_dict())
  config.control.train.num_steps = 3000
  config.control.transformer = ml_collections.ConfigDict(config.mqar.transformer.to_dict())

  # The same search as on CPU, at this config's shortest and longest distances.
  config.lr_search.distances = ml_collections.ConfigDict(
      {"copy_memory": (10, 2000), "mqar": (64, 512)})
  return config
