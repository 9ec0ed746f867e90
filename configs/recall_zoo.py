"""The recall zoo: recall accuracy against recurrent state size (Arora et al. 2023, 2024).

python -m experiments.sweep --config=configs/recall_zoo.py --workdir=runs/recall_zoo

Every model is `attn_jax.nn.MixerModel` (embedding, pre-LayerNorm blocks with a short causal
convolution, MLP, final norm, classifier) and differs from the others in its mixer alone; each
mixer runs at the sizes in ``sizes`` (the one setting swept per mixer), on MQAR at three
difficulties (Zoology's (length, pairs)) and on selective copying. The protocol is the headline's:
the seeds of a configuration train as one vmapped program; every model of a task gets the same
budget and early stop; every model's learning rate comes from the same grid
(``lr_search.learning_rates``, searched by `python -m experiments.zoo_search`), written into
``learning_rates`` below.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  # Marks the config as the recall zoo's (experiments.sweep dispatches on it).
  config.recall_zoo = True
  # The models compared: attention, its sliding window, linear attention (elu + 1), Based's
  # Taylor linear attention, a scalar-gated recurrence, the LSTM.
  config.models = ("transformer", "sliding_window", "based", "linear_attention",
                   "gated_linear", "lstm")
  # Seeds per configuration (one vmapped program); results report mean [min, max].
  config.seeds = (0, 1, 2)
  # Processes the runs are spread over.
  config.workers = 2
  # Train nothing: write the results of the runs already finished in the workdir (an
  # interrupted zoo).
  config.finished_only = False

  # The block every model shares (attn_jax.training.MixerSpec); `sizes` overrides one field.
  config.model = ml_collections.ConfigDict()
  # Model width (all mixers map d_model -> d_model).
  config.model.d_model = 32
  # Blocks. One suffices for MQAR: the short convolution binds each value to the key before it,
  # the job of Zoology's first (previous-token) attention layer.
  config.model.num_layers = 1
  # MLP hidden width (0: 2 * d_model).
  config.model.d_ff = 0
  # Heads of every mixer that has heads.
  config.model.num_heads = 2
  # Key (feature-map input) width of the linear and gated mixers.
  config.model.key_dim = 8
  # Sliding-window width.
  config.model.window = 16
  # Chunk length of the chunked linear and gated forms.
  config.model.chunk_size = 64
  # Kernel of the causal depthwise convolution in every block.
  config.model.short_conv = 4
  # Positions of the attention mixers on MQAR: none (causal attention matches keys by content;
  # with RoPE it learnt MQAR at L 128 half as fast, 0.155 against 0.32 after 300 steps).
  config.model.positional = "none"

  # Per model, the one setting swept and its values (the state sizes of the figure).
  config.sizes = ml_collections.ConfigDict({
      "transformer": {"field": "d_model", "values": (32,)},
      "sliding_window": {"field": "window", "values": (4, 16, 64)},
      "based": {"field": "key_dim", "values": (2, 4, 8)},
      "linear_attention": {"field": "key_dim", "values": (4, 16, 64)},
      "gated_linear": {"field": "key_dim", "values": (4, 16, 64)},
      "lstm": {"field": "d_model", "values": (16, 32, 64)},
  })

  # Each model's peak learning rate: the choice of `python -m experiments.zoo_search` on the
  # grid below (docs/recall_zoo.md has the search's results).
  config.learning_rates = ml_collections.ConfigDict({
      "transformer": 1e-2, "sliding_window": 3e-2, "based": 3e-2, "linear_attention": 3e-2,
      "gated_linear": 1e-2, "lstm": 3e-2})

  # The budget of every run (tasks may override it).
  config.train = ml_collections.ConfigDict()
  config.train.num_steps = 300
  config.train.batch_size = 16
  config.train.warmup_steps = 20
  config.train.end_lr_fraction = 0.1
  config.train.grad_clip_norm = 1.0
  config.train.log_every = 25
  # Validation every 25 steps (a stream the reported evaluation never sees) for the curves and
  # the early stop once every seed is solved.
  config.train.eval_every = 25
  config.train.eval_batches = 4
  config.train.stop_accuracy = 0.99

  # MQAR at Zoology's (length, pairs), random non-query tokens, 31 keys and 32 values.
  config.mqar = ml_collections.ConfigDict()
  config.mqar.enabled = True
  config.mqar.seq_lens = (64, 128, 256)
  config.mqar.num_pairs = (4, 8, 16)
  config.mqar.vocab_size = 64
  config.mqar.distractors = True

  # Selective copying (Gu & Dao 2023): 8 data tokens of 8 symbols among 48 positions.
  config.selective_copy = ml_collections.ConfigDict()
  config.selective_copy.enabled = True
  config.selective_copy.context_len = 48
  config.selective_copy.num_tokens = 8
  config.selective_copy.num_symbols = 8
  # Two blocks, as Mamba's Table 1: the k-th marker must find the k-th data token, a count that
  # one attention layer cannot take.
  # RoPE: the k-th marker looks up the k-th data token by position.
  config.selective_copy.model = ml_collections.ConfigDict(
      {"num_layers": 2, "positional": "rope"})

  # The learning-rate grid, the same for every model, searched on seeds the zoo does not report.
  config.lr_search = ml_collections.ConfigDict()
  config.lr_search.learning_rates = (1e-3, 3e-3, 1e-2, 3e-2)
  config.lr_search.seeds = (100, 101)
  # The search's budget: the zoo's (its runs are the zoo's at the middle size and length).
  config.lr_search.num_steps = 300
  return config
