"""The number to beat: multinomial logistic regression on time-pooled features.

Each clip (T, F) becomes 2F numbers, the mean and standard deviation of every
feature over time, standardised with the training set's statistics; a
softmax regression with L2 penalty is fitted by full-batch gradient descent
with Nesterov momentum (the loss is convex, so this is plain and reliable).
A model that cannot beat this has not learned anything about time.
"""
from __future__ import annotations

import numpy as np

__all__ = ["pool", "fit_logreg", "predict_logreg"]


def pool(x):
    # x: (N, T, F) -> (N, 2F): mean and std over time
    x = np.asarray(x, dtype=np.float64)
    return np.concatenate([x.mean(axis=1), x.std(axis=1)], axis=1)


def fit_logreg(x, y, n_classes, l2=1e-3, steps=500, lr=0.5):
    """-> model dict (mean, std, W, b) fitted on features x (N, T, F) and labels y (N,)."""
    z = pool(x)
    mean, std = z.mean(axis=0), z.std(axis=0) + 1e-8
    z = (z - mean) / std
    N, D = z.shape
    W, b = np.zeros((D, n_classes)), np.zeros(n_classes)
    vW, vb = np.zeros_like(W), np.zeros_like(b)
    onehot = np.eye(n_classes)[y]
    for _ in range(steps):
        # Nesterov: gradient at the look-ahead point
        Wl, bl = W + 0.9 * vW, b + 0.9 * vb
        logits = z @ Wl + bl
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        g = (p - onehot) / N
        gW, gb = z.T @ g + l2 * Wl, g.sum(axis=0)
        vW, vb = 0.9 * vW - lr * gW, 0.9 * vb - lr * gb
        W, b = W + vW, b + vb
    return {"mean": mean, "std": std, "W": W, "b": b}


def predict_logreg(model, x):
    z = (pool(x) - model["mean"]) / model["std"]
    return np.argmax(z @ model["W"] + model["b"], axis=1)
