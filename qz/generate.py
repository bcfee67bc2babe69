"""Text generation from a character (byte) language model.

Each new token runs the model on the last ``max_len`` tokens and samples the
next one from the final position's logits: greedy at temperature 0, else
softmax(logits / temperature), optionally restricted to the ``top_k_tokens``
most likely. Seeded, so a seed gives the same text every time. (This is the
plain full-window decoder; a KV cache is the natural next step.)
"""
from __future__ import annotations

import numpy as np

from .model import forward

__all__ = ["generate", "encode", "decode"]


def encode(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64)


def decode(ids) -> str:
    return bytes(int(i) for i in ids).decode("utf-8", errors="replace")


def generate(params, cfg, prompt_ids, n_new, temperature=0.8, top_k_tokens=None, seed=0, top_k=None,
             on_token=None):
    """-> ids (prompt + n_new); on_token(id) is called as each token is chosen (for streaming)."""
    if cfg.mode != "lm":
        raise ValueError("generate: needs a language model (vocab_size set)")
    ids = [int(i) for i in np.asarray(prompt_ids).reshape(-1)]
    if not ids:
        raise ValueError("prompt: give at least one token")
    if temperature < 0:
        raise ValueError(f"temperature: must be >= 0, got {temperature}")
    rng = np.random.default_rng(seed)
    for _ in range(n_new):
        window = np.array(ids[-cfg.max_len:], dtype=np.int64)[None]           # (1, T)
        logits, _ = forward(params, cfg, window, top_k=top_k)                   # (1, T, V)
        z = logits[0, -1].astype(np.float64)
        if temperature == 0:
            nxt = int(np.argmax(z))
        else:
            z = z / temperature
            if top_k_tokens:
                cut = np.sort(z)[-min(top_k_tokens, z.size)]
                z = np.where(z >= cut, z, -np.inf)
            p = np.exp(z - z.max())
            nxt = int(rng.choice(z.size, p=p / p.sum()))
        ids.append(nxt)
        if on_token is not None:
            on_token(nxt)
    return np.array(ids, dtype=np.int64)
