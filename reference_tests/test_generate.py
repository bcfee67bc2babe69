"""Sampling from a character LM (qz/generate.py)."""
import numpy as np
import pytest

import qz
from qz.generate import decode, encode, generate


@pytest.fixture(scope="module")
def lm():
    cfg = qz.Config(d_model=16, n_heads=2, n_layers=1, n_experts=2, top_k=1, d_ff=16, max_len=8, vocab_size=256)
    return qz.init_params(cfg, seed=0, dtype=np.float64), cfg


def test_seeded_and_long_prompts_use_the_last_window(lm):
    params, cfg = lm
    prompt = encode("hello world, a prompt longer than max_len")
    a = generate(params, cfg, prompt, 12, temperature=1.0, seed=5)
    b = generate(params, cfg, prompt, 12, temperature=1.0, seed=5)
    c = generate(params, cfg, prompt, 12, temperature=1.0, seed=6)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert len(a) == len(prompt) + 12 and np.array_equal(a[:len(prompt)], prompt)


def test_greedy_picks_the_argmax_of_the_full_forward(lm):
    params, cfg = lm
    ids = generate(params, cfg, encode("abc"), 3, temperature=0)
    for t in range(3, 6):
        window = ids[max(0, t - cfg.max_len):t][None]
        logits, _ = qz.forward(params, cfg, window)
        assert ids[t] == int(np.argmax(logits[0, -1])), t


def test_top_k_tokens_restricts_choices(lm):
    params, cfg = lm
    logits, _ = qz.forward(params, cfg, encode("ab")[None])
    allowed = set(np.argsort(logits[0, -1])[-3:].tolist())
    for seed in range(20):
        nxt = generate(params, cfg, encode("ab"), 1, temperature=2.0, top_k_tokens=3, seed=seed)[-1]
        assert int(nxt) in allowed


def test_round_trip_text():
    assert decode(encode("In the beginning")) == "In the beginning"
