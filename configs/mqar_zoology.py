"""MQAR at the settings of Zoology's Figure 2 (Arora et al. 2023), every model, one GPU.

python -m experiments.lr_search --config=configs/mqar_zoology.py --workdir=runs/lr_zoology
python -m experiments.sweep --config=configs/mqar_zoology.py --workdir=runs/mqar_zoology

Vocabulary 8192; (seq_len, num_pairs) in (64, 4), (128, 8), (256, 16), (512, 64); random
non-query tokens as Zoology's ``random_non_queries=True`` (here never value tokens: the target
sits at the query itself, so an encoder must not see it later). Zoology trains on 100k sequences
for 64 epochs and sweeps learning rates; this config takes the protocol of
configs/long_range_gpu.py: three seeds, 10k steps of 64 sequences (640k sequences) for every
model, the same early stop, and each model's rate from the same search (`lr_search`). Attention
is near 1.0 at every size in the paper.
"""

import ml_collections

from configs import long_range_gpu


def get_config() -> ml_collections.ConfigDict:
  config = long_range_gpu.get_config()
  # MQAR only.
  config.copy_memory.enabled = False
  config.control.enabled = False
  config.lr_search.distances = ml_collections.ConfigDict({"mqar": (64, 512)})
  return config
