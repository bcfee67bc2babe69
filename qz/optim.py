"""AdamW, global-norm gradient clipping, warmup + cosine schedule (docs/spec.md §5).

AdamW is Loshchilov & Hutter's decoupled weight decay, as in PyTorch's
``torch.optim.AdamW``: the decay shrinks the weight directly (``p -= lr * wd * p``)
instead of being added to the gradient, so Adam's per-parameter scaling does
not weaken it. Norm gains and biases are not decayed: pulling a gain toward
0 would fight the normalisation it exists to undo.

The optimizer state is a plain dict of arrays (``m.<name>``, ``v.<name>``) plus
the step count, so it can be stored in a checkpoint and resumed exactly.
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["decays", "adamw_init", "adamw_step", "clip_grad_norm", "lr_at"]


def decays(name: str) -> bool:
    """Whether weight decay applies: not to norm gains nor biases."""
    leaf = name.rsplit(".", 1)[-1]
    return not (leaf.endswith("norm") or leaf == "bias")


def adamw_init(params):
    """Zero first and second moments, same dtypes as the parameters."""
    state = {}
    for name, p in params.items():
        state["m." + name] = np.zeros_like(p)
        state["v." + name] = np.zeros_like(p)
    return state


def adamw_step(params, grads, state, t, lr, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0):
    """One AdamW update of every parameter, in place. t is the 1-based step number."""
    bc1 = 1.0 - beta1 ** t            # bias corrections for the zero-initialised moments
    bc2 = 1.0 - beta2 ** t
    for name, p in params.items():
        g = grads[name]
        m, v = state["m." + name], state["v." + name]
        m *= beta1
        m += (1.0 - beta1) * g
        v *= beta2
        v += (1.0 - beta2) * g * g
        if weight_decay and decays(name):
            p *= 1.0 - lr * weight_decay
        p -= (lr / bc1) * m / (np.sqrt(v / bc2) + eps)


def clip_grad_norm(grads, max_norm):
    """Scale all gradients together so their global L2 norm is at most max_norm.

    Returns the norm before clipping (reported in the progress line). A
    non-finite norm is returned unchanged and nothing is scaled: the caller
    decides what to do with a broken step.
    """
    total = math.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in grads.values()))
    if max_norm and math.isfinite(total) and total > max_norm:
        scale = max_norm / (total + 1e-6)
        for g in grads.values():
            g *= scale
    return total


def lr_at(step, base_lr, warmup, total, min_ratio=0.1):
    """Linear warmup over `warmup` steps, then cosine decay to min_ratio * base_lr at `total`.

    step is 0-based: step 0 uses base_lr / warmup, so the first update is small.
    """
    if warmup > 0 and step < warmup:
        return base_lr * (step + 1) / warmup
    if total <= warmup:
        return base_lr
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return base_lr * (min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress)))
