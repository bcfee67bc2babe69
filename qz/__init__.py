"""qz: the reference implementation of Qingzhou-mini, a small Mixture-of-Experts
transformer for CPU-only, battery-powered devices (see docs/spec.md).

Public API (docs/spec.md §7)::

    qz.Config.from_dict(d) / .to_dict()
    qz.init_params(cfg, seed=0, dtype=np.float32) -> dict[str, ndarray]
    qz.forward(params, cfg, inputs, top_k=None, quant=None) -> (logits, aux)
    qz.loss_and_grads(params, cfg, inputs, targets, aux_coef=0.0, top_k=None, quant=None)
    qz.save(path, params, cfg, **meta) / qz.load(path) -> (params, cfg, meta)
"""
from .checkpoint import CheckpointError, load, save
from .config import Config, preset
from .model import forward, init_params, loss_and_grads

__version__ = "0.1.0"
__all__ = ["Config", "preset", "init_params", "forward", "loss_and_grads", "save", "load",
           "CheckpointError", "__version__"]
