"""Energy of one inference: counted work times published per-operation energies (docs/spec.md §4).

    work = count_work(cfg, "int8", top_k=1)    # MACs by where they run, weight bytes read
    estimate_energy(work)                      # joules: compute, memory, total
    read_rapl() ... rapl_joules_between(...)   # measured, where the machine exposes RAPL

Per-operation energies are from M. Horowitz, "Computing's energy problem (and
what we can do about it)", IEEE ISSCC 2014, pp. 10-14 (45 nm, 0.9 V): the
table ``HOROWITZ_45NM_PJ``.

What is counted, from the Config alone (docs/spec.md §2, §3):

* MACs (multiply-accumulates). In "int8" every quantized linear runs on
  integers (in_proj, wq wk wv wo, the k routed and the shared experts' w1 w3
  w2, head); the gate and attention (QK^T and PV) stay float32. In "fp32" and
  "fp16" every MAC is float32 (fp16 only stores weights as float16). Causal
  attention counts only the lower triangle, T(T+1)/2 query-key pairs.
  Elementwise work (norms, softmax, SiLU, residual adds, (de)quantizing
  activations) is O(T d), small beside the matmuls, and not counted.
* weight bytes read. Each weight used is read once per inference (the batch
  shares the read); activations are not counted. Routed experts count at
  most min(E, k * B * T) distinct experts per layer: an upper bound, since
  tokens often share experts. LM mode reads min(V, B * T) rows of `embed`,
  and T rows of `pos` in both modes. Bytes per value: 4 (fp32), 2 (fp16), and
  in int8 1 per quantized weight plus a 4-byte scale per output channel (per
  row for embed and pos) while the gate, norms and biases stay 4.

Shape letters: B batch, T sequence length, d width, f expert width, E experts,
k experts per token, S shared experts, V outputs, N = B * T tokens.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from ..config import Config
from ..errors import InputError

__all__ = ["HOROWITZ_45NM_PJ", "PRECISIONS", "Work", "count_work", "model_weight_bytes", "estimate_energy",
           "read_rapl", "read_rapl_ranges", "rapl_joules_between"]

# Horowitz, ISSCC 2014, 45 nm, 0.9 V: picojoules per operation. Memory rows are
# per 64-bit (8-byte) access; DRAM is quoted as 1.3-2.6 nJ, both ends kept here.
HOROWITZ_45NM_PJ = MappingProxyType({
    "int8_add": 0.03, "int8_mult": 0.2,
    "int32_add": 0.1, "int32_mult": 3.1,
    "fp16_add": 0.4, "fp16_mult": 1.1,
    "fp32_add": 0.9, "fp32_mult": 3.7,
    "sram_8kb_read64": 10.0, "sram_32kb_read64": 20.0, "sram_1mb_read64": 100.0,
    "dram_read64_low": 1300.0, "dram_read64_high": 2600.0,
})

PRECISIONS = ("fp32", "fp16", "int8")
_KEPT_FLOAT = ("attn_norm", "ffn_norm", "final_norm", "gate", "in_proj.bias", "head.bias")


@dataclass(frozen=True)
class Work:
    """The work of one inference of B sequences of T steps."""
    precision: str
    batch: int
    seq_len: int
    top_k: int
    int8_macs: int            # int8 x int8 products accumulated in int32
    fp32_macs: int
    weight_bytes: int         # weights read for this inference
    model_bytes: int          # all weights of the model at this precision (decides the memory tier)
    expert_budget: int | None = None   # each sequence's allowed experts per layer (docs/spec.md §4)


def _bytes(precision: str, rows: int, cols: int, quantized: bool, per_row: bool = False) -> int:
    """Bytes of a (rows, cols) weight at `precision`. int8 scales: one per column, or per row."""
    if precision == "fp32" or (precision == "int8" and not quantized):
        return 4 * rows * cols
    if precision == "fp16":
        return 2 * rows * cols
    return rows * cols + 4 * (rows if per_row else cols)


def _check(cfg: Config, precision: str, top_k, batch: int, seq_len) -> tuple[int, int]:
    if precision not in PRECISIONS:
        raise InputError(f"precision: expected one of {', '.join(PRECISIONS)}, got {precision!r}")
    k = cfg.top_k if top_k is None else top_k
    T = cfg.max_len if seq_len is None else seq_len
    for key, value, lo, hi in (("top_k", k, 1, cfg.n_experts), ("batch", batch, 1, math.inf),
                               ("seq_len", T, 1, cfg.max_len)):
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise InputError(f"{key}: expected an integer in [{lo}, {hi}], got {value!r}")
    return k, T


def count_work(cfg: Config, precision: str, top_k: int | None = None, batch: int = 1,
               seq_len: int | None = None, expert_budget: int | None = None) -> Work:
    """MACs by number format and weight bytes read for one inference (see the module docstring).
    expert_budget m: each of the B sequences reads only its m allowed experts' weights per layer,
    and top_k is clipped to m (docs/spec.md §4)."""
    k, T = _check(cfg, precision, top_k, batch, seq_len)
    m = cfg.n_experts if expert_budget is None else expert_budget
    if isinstance(m, bool) or not isinstance(m, int) or not 1 <= m <= cfg.n_experts:
        raise InputError(f"expert_budget: expected an integer in [1, {cfg.n_experts}], got {expert_budget!r}")
    k = min(k, m)
    B, d, f, E, S, V = batch, cfg.d_model, cfg.d_ff, cfg.n_experts, cfg.n_shared_experts, cfg.n_out
    N = B * T
    lin = wb = 0                          # MACs of quantized linears; weight bytes
    att = gate = 0                        # MACs that stay float32

    def read(rows, cols, name, per_row=False):
        return _bytes(precision, rows, cols, name not in _KEPT_FLOAT, per_row)

    if cfg.mode == "lm":
        wb += read(min(V, N), d, "embed", per_row=True)              # a lookup: no MACs
    else:
        lin += N * cfg.input_dim * d                                   # (N, in) @ (in, d)
        wb += read(cfg.input_dim, d, "in_proj.weight") + read(1, d, "in_proj.bias")
    wb += read(T, d, "pos", per_row=True)
    pairs = T * (T + 1) // 2 if cfg.causal else T * T                  # query-key pairs per head
    experts_read = min(E, B * m, k * N)                                # upper bound on distinct experts
    expert_bytes = read(d, f, "w1") + read(d, f, "w3") + read(f, d, "w2")
    for _ in range(cfg.n_layers):
        lin += N * d * 4 * d                                           # wq wk wv wo: 4 x (N, d) @ (d, d)
        att += 2 * B * pairs * d                                       # QK^T and PV, summed over heads
        gate += N * d * E                                              # (N, d) @ (d, E)
        lin += N * (k + S) * 3 * d * f                                 # w1, w3: (d, f); w2: (f, d)
        wb += read(1, d, "attn_norm") + read(1, d, "ffn_norm") + 4 * read(d, d, "wq") + read(d, E, "gate")
        wb += (experts_read + S) * expert_bytes
    head_rows = N if cfg.mode == "lm" else B                           # classifier: mean-pool first
    lin += head_rows * d * V
    wb += read(1, d, "final_norm") + read(d, V, "head.weight") + read(1, V, "head.bias")
    int8 = lin if precision == "int8" else 0
    return Work(precision, B, T, k, int8_macs=int8, fp32_macs=lin - int8 + att + gate,
                weight_bytes=wb, model_bytes=model_weight_bytes(cfg, precision),
                expert_budget=None if m == E else m)


def model_weight_bytes(cfg: Config, precision: str) -> int:
    """Bytes of every weight of the model at `precision` (as qz.quant.precision_sizes counts them)."""
    if precision not in PRECISIONS:
        raise InputError(f"precision: expected one of {', '.join(PRECISIONS)}, got {precision!r}")
    d, f, E, S, V = cfg.d_model, cfg.d_ff, cfg.n_experts, cfg.n_shared_experts, cfg.n_out

    def b(rows, cols, quantized=True, per_row=False):
        return _bytes(precision, rows, cols, quantized, per_row)

    total = b(cfg.vocab_size, d, per_row=True) if cfg.mode == "lm" else \
        b(cfg.input_dim, d) + b(1, d, quantized=False)
    total += b(cfg.max_len, d, per_row=True)
    layer = 2 * b(1, d, quantized=False) + 4 * b(d, d) + b(d, E, quantized=False) + \
        (E + S) * (2 * b(d, f) + b(f, d))
    total += cfg.n_layers * layer
    return total + b(1, d, quantized=False) + b(d, V) + b(1, V, quantized=False)


def estimate_energy(work: Work, cache_bytes: int = 1 << 20, table=HOROWITZ_45NM_PJ) -> dict:
    """Joules of one inference: {"compute_j", "memory_j", "total_j", "memory_tier"}.

    An int8 MAC is an 8-bit multiply plus a 32-bit integer add (the int32
    accumulator); an fp32 MAC is an fp32 multiply plus an fp32 add. Weights
    are priced per 8 bytes read: as 1 MB SRAM reads when the whole model at
    this precision fits in `cache_bytes` (it stays resident between
    inferences), else as DRAM at the low end of Horowitz's range (1.3 nJ), so
    the estimate errs low rather than high.
    """
    int8_mac = table["int8_mult"] + table["int32_add"]
    fp32_mac = table["fp32_mult"] + table["fp32_add"]
    compute_pj = work.int8_macs * int8_mac + work.fp32_macs * fp32_mac
    tier = "sram_1mb" if work.model_bytes <= cache_bytes else "dram"
    per_read = table["sram_1mb_read64"] if tier == "sram_1mb" else table["dram_read64_low"]
    memory_pj = work.weight_bytes / 8 * per_read
    return {"compute_j": compute_pj * 1e-12, "memory_j": memory_pj * 1e-12,
            "total_j": (compute_pj + memory_pj) * 1e-12, "memory_tier": tier}


# ----------------------------------------------------------------------------
# RAPL: measured package energy, where /sys/class/powercap exposes it
# ----------------------------------------------------------------------------
_PACKAGE = re.compile(r"intel-rapl:\d+")    # top level only: intel-rapl:0:0 (core, dram) is inside


def _read_text(path: Path) -> str | None:
    try:
        return path.read_bytes()[:4096].decode("utf-8").strip()
    except (OSError, ValueError):                 # missing, unreadable (often root-only), not UTF-8
        return None


def _rapl_files(root: str, leaf: str) -> dict[str, int] | None:
    """Package domain -> the integer in its `leaf` file; None if none is readable. Never raises.

    A domain whose `name` is readable and not "package-N" is skipped (psys covers
    the whole platform and would double count); one without a readable name
    is kept, as top-level domains are packages.
    """
    try:
        domains = sorted(Path(root, "sys/class/powercap").iterdir())
    except OSError:
        return None
    out = {}
    for dom in domains:
        if not _PACKAGE.fullmatch(dom.name):
            continue
        name = _read_text(dom / "name")
        if name is not None and not name.startswith("package"):
            continue
        text = _read_text(dom / leaf)
        if text is not None and re.fullmatch("[0-9]+", text):
            out[dom.name] = int(text)
    return out or None


def read_rapl(root: str = "/") -> dict[str, int] | None:
    """Package domain ("intel-rapl:0") -> energy_uj counter, or None when absent or unreadable."""
    return _rapl_files(root, "energy_uj")


def read_rapl_ranges(root: str = "/") -> dict[str, int] | None:
    """Package domain -> max_energy_range_uj, where its counter wraps."""
    return _rapl_files(root, "max_energy_range_uj")


def rapl_joules_between(before: dict[str, int] | None, after: dict[str, int] | None,
                        max_range: dict[str, int] | int | None) -> float | None:
    """Joules used between two read_rapl() samples, summed over the domains in both.

    A counter that went down wrapped once: its delta is after - before +
    max_range (energy_uj runs 0..max_energy_range_uj, as in the kernel's
    powercap docs and tools like pyRAPL). None when the samples share no domain,
    or a counter wrapped and its range is unknown. Assumes at most one wrap
    between samples (minutes at full power on a typical package).
    """
    if not before or not after:
        return None
    common = sorted(set(before) & set(after))
    total = 0
    for dom in common:
        delta = after[dom] - before[dom]
        if delta < 0:
            rng = max_range.get(dom) if isinstance(max_range, dict) else max_range
            if rng is None:
                return None
            delta += rng
            if delta < 0:                         # the range does not explain the drop: a reset
                return None
        total += delta
    return total * 1e-6 if common else None
