"""MQAR at the settings of Zoology's Figure 2 (Arora et al. 2023), every model, one GPU.

python -m experiments.sweep --config=configs/mqar_zoology.py --workdir=runs/mqar_zoology

Vocabulary 8192; (seq_len, num_pairs) in (64, 4), (128, 8), (256, 16), (512, 64). Zoology trains
on 100k sequences for 64 epochs with a learning-rate sweep; this config takes one rate and
10k steps of 64 sequences (640k sequences). Attention is near 1.0 at every size in the paper.
"""

import ml_collections

from configs import long_range_gpu


def get_config() -> ml_collections.ConfigDict:
  config = long_range_gpu.get_config()
  # MQAR only.
  config.copy_memory.enabled = False
  config.control.enabled = False
  return config
