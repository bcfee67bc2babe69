"""Every random stream of training, by name, in one place (so that no two are one).

A stream is ``np.random.default_rng([seed, *index, id])``: the run's seed, the stream's
index (the step or the epoch it serves; none for a one-off draw) and the stream's id.
numpy's SeedSequence reads trailing zeros as absent (``[seed, 7]``, ``[seed, 7, 0]`` and
``[seed, 7, 0, 0]`` are one stream, as ``seed`` and ``[seed, 0]`` are), so every id but
``init``'s is nonzero and comes last: two streams are one only if name and index agree.
``init`` is the bare seed, ``default_rng(seed)``, from which ``model.init_params`` draws.
"""
from __future__ import annotations

import numpy as np

STREAMS = {
    "init": 0,             # model.init_params: the initial weights (the bare seed)
    "batch": 1,            # data.TextData.batch: the windows of a step (index: step)
    "top_k": 2,            # train: the k an elastic top-k step draws (index: step)
    "augment": 3,          # train: SpecAugment-style masks and noise (index: step)
    "vtlp": 5,             # augment.WarpedData: the warp of a step's clips (index: step)
    "mixup": 6,            # train: mixup partners and weights (index: step)
    "holdout": 7,          # data: the rows held out for validation when a set has none
    "epoch": 8,            # data.ArrayData.batch: the order of an epoch (index: epoch)
    "split": 11,           # finetune.stratified_split: train / validation per class
    "head": 13,            # finetune.new_head: a fresh classifier head
    "budget": 14,          # train: the expert budget an elastic-budget step draws (index: step)
}


def stream(seed: int, name: str, *index: int) -> np.random.Generator:
    """The generator of stream `name` of a run seeded `seed`, at `index` (a step, an epoch)."""
    return np.random.default_rng([int(seed), *(int(i) for i in index), STREAMS[name]])
