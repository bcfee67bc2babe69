"""The named random streams (qz/streams.py): no two are one."""
import numpy as np
from hypothesis import given

from qz.streams import STREAMS, stream
from strategies import seeds


def _first(g):
    return tuple(g.integers(0, 2**63, 4).tolist())


def test_ids_are_distinct_and_nonzero_but_init():
    assert len(set(STREAMS.values())) == len(STREAMS)
    assert STREAMS["init"] == 0 and all(v > 0 for k, v in STREAMS.items() if k != "init")


def test_numpy_reads_trailing_zeros_as_absent():
    """Why ids are nonzero and last: [s, 7] and [s, 7, 0] are one stream, as s and [s, 0]."""
    assert _first(np.random.default_rng([5, 7])) == _first(np.random.default_rng([5, 7, 0]))
    assert _first(np.random.default_rng(5)) == _first(stream(5, "init"))


@given(seeds)
def test_no_two_streams_of_a_run_are_one(seed):
    """The defect fixed here: an epoch's order was default_rng([seed, epoch]), the same stream as
    the hold-out split at epoch 7, the fine-tune split and head at 11 and 13, and the initial
    weights at epoch 0."""
    drawn = {}
    for name in STREAMS:
        indices = [()] if name in ("init", "holdout", "split", "head") else [(i,) for i in range(16)]
        for index in indices:
            key = _first(stream(seed, name, *index))
            assert key not in drawn, f"{name}{index} is {drawn[key]}"
            drawn[key] = (name, index)
    one_off = ("init", "holdout", "split", "head")
    assert len(drawn) == len(one_off) + 16 * (len(STREAMS) - len(one_off))


@given(seeds)
def test_a_stream_is_a_pure_function_of_seed_name_and_index(seed):
    assert _first(stream(seed, "epoch", 3)) == _first(stream(seed, "epoch", 3))
    assert _first(stream(seed, "epoch", 3)) != _first(stream(seed + 1, "epoch", 3))
