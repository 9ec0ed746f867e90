"""The headline sweep: transformer, LSTM and LSTM+attention on copy_memory and mqar.

python -m experiments.sweep --config=configs/long_range.py --workdir=runs/long_range

The protocol (docs/experiments.md says how each value was chosen and what it costs):
- several seeds per configuration, trained together as one vmapped program;
- on each task group every model gets the same budget at every distance: the same steps, batch
  size, warmup and cosine schedule, and the same early stop (once every seed's validation
  accuracy is 1.0, a run that has solved its task stops spending the budget);
- each model's peak learning rate on a group comes from the same small search
  (`python -m experiments.lr_search`, grid and seeds in `lr_search`), written into
  ``learning_rates`` below.
A task section may override `train` and any model section (e.g. `mqar.transformer` over
`transformer`).
"""

import ml_collections

from configs import common


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  # The models compared, each on every task and distance.
  config.models = ("transformer", "lstm", "lstm_attention")
  # Seeds per configuration (run as one vmapped program); results report mean [min, max].
  config.seeds = (0, 1, 2)
  # Processes the runs are spread over (one per CPU core).
  config.workers = 2
  # The copy_memory delay whose trained Transformer is drawn in attention_maps.png.
  config.attention_map_delay = 500
  common.model_sections(config)
  # The LSTMs have more parameters than the Transformers they are compared with; the LSTM of
  # LSTM + attention is the LSTM baseline itself.
  config.lstm.hidden_size = 128
  config.lstm_attention.hidden_size = 128
  # Luong's multiplicative score, low rank: [L, L] logits per example, where the additive score
  # would hold [L, L, attention_hidden] (several times the time at L = 520).
  config.lstm_attention.score = "dot"
  config.lstm_attention.attention_hidden = 16
  config.lstm_attention.attention_implementation = "reference"
  common.train_section(config, num_steps=1000, batch_size=32, learning_rate=1e-3)
  # Each model's rate comes from its group's `learning_rates`, never from here.
  del config.train.learning_rate
  # No checkpoints inside a sweep (each run takes seconds to minutes).
  config.train.checkpoint_every = 0
  config.train.log_every = 50
  # Validation (a key stream the reported evaluation never sees) for the curves and the stop.
  config.train.eval_every = 50
  config.train.stop_accuracy = 0.998

  # Copying memory (Arjovsky et al. 2016) over delays; L = delay + 20.
  config.copy_memory = ml_collections.ConfigDict()
  # Run this task.
  config.copy_memory.enabled = True
  # Delays swept: from one the LSTM solves within the budget to far beyond its reach.
  config.copy_memory.delays = (5, 10, 20, 50, 100, 500)
  # Train on the 10 recall positions only (as MQAR trains its queries only).
  config.copy_memory.recall_weight = 1.0
  # The copy budget, the same for every model at every delay.
  config.copy_memory.train = ml_collections.ConfigDict()
  config.copy_memory.train.num_steps = 1500
  config.copy_memory.train.batch_size = 16
  config.copy_memory.train.warmup_steps = 50
  # Each model's peak learning rate: the choice of `python -m experiments.lr_search` (grid and
  # results in docs/experiments.md).
  config.copy_memory.learning_rates = ml_collections.ConfigDict(
      {"transformer": 1e-2, "lstm": 5e-3, "lstm_attention": 5e-3})
  # One block with sinusoidal positions: recall is one lookup at a fixed offset, which
  # sinusoids express linearly.
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
  # Zoology's random non-query tokens (here never value tokens) instead of blanks.
  config.mqar.distractors = True
  # The MQAR budget, the same for every model at every length.
  config.mqar.train = ml_collections.ConfigDict()
  config.mqar.train.num_steps = 1000
  config.mqar.train.batch_size = 32
  config.mqar.train.warmup_steps = 50
  config.mqar.learning_rates = ml_collections.ConfigDict(
      {"transformer": 2.5e-3, "lstm": 2.5e-3, "lstm_attention": 1e-2})
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
      {"name": "mqar", "seq_len": 16, "num_pairs": 1, "vocab_size": 16, "distractors": True})
  # The MQAR budget, learning rates and models.
  config.control.train = ml_collections.ConfigDict(config.mqar.train.to_dict())
  config.control.learning_rates = ml_collections.ConfigDict(config.mqar.learning_rates.to_dict())
  config.control.transformer = ml_collections.ConfigDict(config.mqar.transformer.to_dict())

  # The learning-rate search (`python -m experiments.lr_search`): the same grid for every model,
  # on seeds the sweep does not report, at the shortest and the longest distance of each group.
  config.lr_search = ml_collections.ConfigDict()
  config.lr_search.learning_rates = (2.5e-3, 5e-3, 1e-2)
  config.lr_search.seeds = (100, 101)
  # The shortest copy delay (where the LSTM can learn) and a long one; not 500, the dearest
  # runs, at which the LSTMs sit at chance for every rate (docs/experiments.md).
  config.lr_search.distances = ml_collections.ConfigDict(
      {"copy_memory": (5, 100), "mqar": (32, 128)})
  return config
