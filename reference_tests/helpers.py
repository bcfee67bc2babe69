"""Test helpers: one tolerance table and the VJP check used by every gradient test.

The check follows jax's `check_vjp`: for a function y = f(x1, x2, ...), a random
upstream gradient dy and random directions v_i,

    <dy, J v>  by float64 central differences  ==  sum_i <J_i^T dy, v_i>  (analytic)

Random (never all-ones) dy and directions with both signs, so a dropped term
or a wrong sign cannot cancel out.
"""
import numpy as np

# named tolerances, one place (STYLE rule 12)
TOL = {
    "grad_f64": 1e-6,        # relative: central differences at eps = 1e-6 in float64
    "kernel_f64": 1e-12,     # numba vs numpy, float64 (relative to the scale of the values)
    "kernel_f32": 2e-5,      # numba vs numpy, float32
    "f32_vs_f64": 2e-4,      # the same model in float32 vs float64
}


def check_vjp(fwd, bwd, inputs, rng, eps=1e-6, tol=TOL["grad_f64"], name="op"):
    """fwd(*inputs) -> y (array or tuple of arrays); bwd(dy) -> grads aligned with inputs
    (None for inputs with no gradient, e.g. integer indices)."""
    inputs = [np.asarray(x) for x in inputs]
    y = fwd(*inputs)
    ys = y if isinstance(y, tuple) else (y,)
    dys = tuple(rng.standard_normal(np.shape(t)) for t in ys)
    grads = bwd(dys if isinstance(y, tuple) else dys[0])
    vs = [rng.standard_normal(x.shape) if g is not None else None for x, g in zip(inputs, grads)]

    def pairing(sign):
        moved = [x + sign * eps * v if v is not None else x for x, v in zip(inputs, vs)]
        out = fwd(*moved)
        outs = out if isinstance(out, tuple) else (out,)
        return sum(float(np.sum(dy * o)) for dy, o in zip(dys, outs))

    numeric = (pairing(+1) - pairing(-1)) / (2 * eps)
    analytic = sum(float(np.sum(g * v)) for g, v in zip(grads, vs) if g is not None)
    scale = max(1.0, abs(numeric), abs(analytic))
    assert abs(numeric - analytic) <= tol * scale, (
        f"{name}: VJP mismatch: numeric {numeric!r} vs analytic {analytic!r}")
    return numeric, analytic
