"""Sections shared by the single-run configs (data only: no logic beyond building dicts)."""

import ml_collections


def model_sections(config: ml_collections.ConfigDict) -> None:
  """Adds one section per model; `config.model` picks which one a run uses."""
  # Transformer encoder (attn_jax.nn.TransformerEncoder), pre-LayerNorm blocks.
  config.transformer = ml_collections.ConfigDict()
  # Model width; num_heads must divide it.
  config.transformer.d_model = 64
  # Number of encoder blocks.
  config.transformer.num_layers = 2
  # Attention heads per block.
  config.transformer.num_heads = 4
  # Hidden width of each block's MLP.
  config.transformer.d_ff = 128
  # Dropout on attention weights, residual branches and embeddings.
  config.transformer.dropout_rate = 0.0
  # sinusoidal | learned | rope | alibi | relative | none.
  config.transformer.positional = "learned"
  # Causal masking (a decoder-only LM) instead of a bidirectional encoder.
  config.transformer.causal = False

  # Stacked LSTM baseline (attn_jax.nn.LSTMBaseline).
  config.lstm = ml_collections.ConfigDict()
  # Hidden (and embedding) width.
  config.lstm.hidden_size = 128
  # Number of stacked LSTM layers.
  config.lstm.num_layers = 1

  # LSTM whose outputs attend over its own past states (attn_jax.nn.LSTMWithAttention).
  config.lstm_attention = ml_collections.ConfigDict()
  # Hidden width of the LSTM.
  config.lstm_attention.hidden_size = 128
  # Width of the additive score (0: hidden_size).
  config.lstm_attention.attention_hidden = 0
  # reference | chunked ("chunked" never holds the [L, L, attention_hidden] tensor).
  config.lstm_attention.attention_implementation = "chunked"


def train_section(config: ml_collections.ConfigDict, *, num_steps: int, batch_size: int,
                  learning_rate: float) -> None:
  """Adds the `train` section (attn_jax.training.TrainConfig)."""
  config.train = ml_collections.ConfigDict()
  # Optimizer steps.
  config.train.num_steps = num_steps
  # Sequences per step.
  config.train.batch_size = batch_size
  # Peak AdamW learning rate, after linear warmup, followed by cosine decay.
  config.train.learning_rate = learning_rate
  # Linear warmup steps.
  config.train.warmup_steps = max(1, num_steps // 20)
  # Final learning rate as a fraction of the peak.
  config.train.end_lr_fraction = 0.1
  # AdamW weight decay (matrices only).
  config.train.weight_decay = 0.0
  # Global gradient-norm clipping (0: off).
  config.train.grad_clip_norm = 1.0
  # Held-out evaluation every this many steps (0: only at the end) ...
  config.train.eval_every = 0
  # ... over this many batches drawn from a key stream training never uses.
  config.train.eval_batches = 4
  # Training metrics are logged every this many steps.
  config.train.log_every = 25
  # Checkpoint every this many steps and at the end (0: only at the end).
  config.train.checkpoint_every = 100
  # Stop with an error after this many consecutive non-finite steps.
  config.train.max_consecutive_nonfinite = 10


def mesh_section(config: ml_collections.ConfigDict) -> None:
  """Adds the `mesh` section (attn_jax.training.sharding.MeshSpec)."""
  config.mesh = ml_collections.ConfigDict()
  # Devices along the data axis (the batch is split over it); -1: all devices left.
  config.mesh.data = 1
  # Devices along the model axis (attention heads and MLP units are split over it).
  config.mesh.model = 1
  # Call jax.distributed.initialize() first (several hosts: TPU pods, multi-node GPU).
  config.mesh.distributed = False
  # Without a cluster manager jax detects: "host:port" of process 0, the process count and this
  # process's rank ("", 0, -1: let jax.distributed.initialize find them).
  config.mesh.coordinator_address = ""
  config.mesh.num_processes = 0
  config.mesh.process_id = -1
