"""Model configuration: a frozen, validated dataclass (docs/spec.md §2.1).

Exactly one of two modes is set:

* language-model mode: ``vocab_size`` (token ids in, next-token logits out);
* classifier mode: ``input_dim`` and ``n_classes`` (feature frames in, class
  logits out).

Bad values raise ``ValueError`` naming the key, so a typo in a JSON config is
reported where it was made, not deep inside a matmul.

``param_shapes(cfg)`` lists every parameter name and shape of docs/spec.md §2.2; the
model, the checkpoint reader and ``qz info`` all use it, so the names live in
one place.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .errors import InputError

__all__ = ["Config", "PRESETS", "preset", "param_shapes", "n_params", "active_params"]


@dataclass(frozen=True)
class Config:
    d_model: int
    n_heads: int
    n_layers: int
    n_experts: int
    top_k: int
    d_ff: int
    max_len: int
    n_shared_experts: int = 0
    vocab_size: int | None = None
    causal: bool | None = None  # None: True in LM mode, False in classifier mode
    input_dim: int | None = None
    n_classes: int | None = None

    def __post_init__(self):
        for key in ("d_model", "n_heads", "n_layers", "n_experts", "top_k", "d_ff", "max_len"):
            _check_int(key, getattr(self, key), minimum=1)
        _check_int("n_shared_experts", self.n_shared_experts, minimum=0)
        if self.d_model % self.n_heads:
            raise InputError(f"n_heads: d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if self.top_k > self.n_experts:
            raise InputError(f"top_k: {self.top_k} is more than n_experts={self.n_experts}")
        lm = self.vocab_size is not None
        clf = self.input_dim is not None or self.n_classes is not None
        if lm == clf:
            raise InputError("vocab_size: set exactly one of vocab_size (LM mode) "
                             "or input_dim and n_classes (classifier mode)")
        if lm:
            _check_int("vocab_size", self.vocab_size, minimum=2)
        else:
            for key in ("input_dim", "n_classes"):
                if getattr(self, key) is None:
                    raise InputError(f"{key}: classifier mode needs both input_dim and n_classes")
            _check_int("input_dim", self.input_dim, minimum=1)
            _check_int("n_classes", self.n_classes, minimum=2)
        if self.causal is None:
            object.__setattr__(self, "causal", lm)
        elif not isinstance(self.causal, bool):
            raise InputError(f"causal: expected true or false, got {self.causal!r}")

    @property
    def mode(self) -> str:
        return "lm" if self.vocab_size is not None else "classifier"

    @property
    def n_out(self) -> int:
        return self.vocab_size if self.vocab_size is not None else self.n_classes

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        if not isinstance(d, dict):
            raise InputError(f"config: expected a mapping, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise InputError(f"{unknown[0]}: unknown config key (known: {', '.join(sorted(known))})")
        missing = sorted(f.name for f in dataclasses.fields(cls)
                         if f.default is dataclasses.MISSING and f.name not in d)
        if missing:
            raise InputError(f"{missing[0]}: missing config key")
        return cls(**d)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> "Config":
        return dataclasses.replace(self, **changes)


def _check_int(key, value, minimum):
    # bool is an int subclass; `True` as a layer count is a typo, not a 1.
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(f"{key}: expected an integer, got {value!r}")
    if value < minimum:
        raise InputError(f"{key}: must be >= {minimum}, got {value}")


# Named presets. `kws` is the keyword-spotting classifier of the foundation
# issue (49 frames x 13 MFCCs, 12 classes); `char_lm` is the small character LM
# used for the text set; `tiny_*` are for tests and quick demos.
PRESETS = {
    "kws": dict(d_model=64, n_heads=4, n_layers=2, n_experts=8, top_k=2, d_ff=128,
                max_len=49, input_dim=13, n_classes=12),
    "char_lm": dict(d_model=256, n_heads=8, n_layers=4, n_experts=8, top_k=2, d_ff=512,
                    n_shared_experts=1, max_len=128, vocab_size=256),
    "tiny_lm": dict(d_model=64, n_heads=4, n_layers=2, n_experts=4, top_k=2, d_ff=128,
                    max_len=64, vocab_size=256),
    "digits": dict(d_model=64, n_heads=4, n_layers=2, n_experts=4, top_k=2, d_ff=128,
                   max_len=8, input_dim=8, n_classes=10),
}


def preset(name: str, **overrides) -> Config:
    """A named preset, optionally with some keys overridden."""
    if name not in PRESETS:
        raise InputError(f"preset: unknown preset {name!r} (known: {', '.join(sorted(PRESETS))})")
    return Config.from_dict({**PRESETS[name], **overrides})


def param_shapes(cfg: Config) -> dict[str, tuple[int, ...]]:
    """Every parameter of docs/spec.md §2.2, in a fixed order: name -> shape."""
    d, E, f, S = cfg.d_model, cfg.n_experts, cfg.d_ff, cfg.n_shared_experts
    shapes: dict[str, tuple[int, ...]] = {}
    if cfg.mode == "lm":
        shapes["embed"] = (cfg.vocab_size, d)
    else:
        shapes["in_proj.weight"] = (cfg.input_dim, d)
        shapes["in_proj.bias"] = (d,)
    shapes["pos"] = (cfg.max_len, d)
    for i in range(cfg.n_layers):
        p = f"blocks.{i}."
        shapes[p + "attn_norm"] = (d,)
        for w in ("wq", "wk", "wv", "wo"):
            shapes[p + w] = (d, d)
        shapes[p + "ffn_norm"] = (d,)
        shapes[p + "gate"] = (d, E)
        shapes[p + "w1"] = (E, d, f)
        shapes[p + "w3"] = (E, d, f)
        shapes[p + "w2"] = (E, f, d)
        if S > 0:
            shapes[p + "shared.w1"] = (S, d, f)
            shapes[p + "shared.w3"] = (S, d, f)
            shapes[p + "shared.w2"] = (S, f, d)
    shapes["final_norm"] = (d,)
    shapes["head.weight"] = (d, cfg.n_out)
    shapes["head.bias"] = (cfg.n_out,)
    return shapes


def n_params(cfg: Config) -> int:
    total = 0
    for shape in param_shapes(cfg).values():
        size = 1
        for s in shape:
            size *= s
        total += size
    return total


def active_params(cfg: Config, top_k: int | None = None) -> int:
    """Parameters touched per token: routed experts count only the k chosen.

    `embed` counts one row per token (a lookup, not a matmul); `pos` one row.
    """
    k = cfg.top_k if top_k is None else top_k
    d, E, f = cfg.d_model, cfg.n_experts, cfg.d_ff
    total = n_params(cfg)
    total -= cfg.n_layers * (E - k) * 3 * d * f  # experts not chosen
    if cfg.mode == "lm":
        total -= (cfg.vocab_size - 1) * d
    total -= (cfg.max_len - 1) * d
    return total
