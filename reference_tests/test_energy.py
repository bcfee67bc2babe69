"""Counted work and estimated energy of one inference, and RAPL readings
(qz/governor/energy.py, docs/spec.md §4)."""
import tempfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qz.config import PRESETS, Config, preset
from qz.governor.energy import (HOROWITZ_45NM_PJ, PRECISIONS, Work, count_work, estimate_energy,
                                model_weight_bytes, rapl_joules_between, read_rapl, read_rapl_ranges)

# d=4, 2 heads, 1 layer, E=4, k=2, f=8, T=3; classifier with 5 inputs and 3 classes
TINY_CLF = Config(d_model=4, n_heads=2, n_layers=1, n_experts=4, top_k=2, d_ff=8, max_len=3,
                  input_dim=5, n_classes=3)
TINY_LM = Config(d_model=4, n_heads=2, n_layers=1, n_experts=4, top_k=2, d_ff=8, max_len=3, vocab_size=6)


def test_hand_count_classifier():
    # MACs, B=1, T=3, N=3 tokens
    in_proj = 3 * 5 * 4                 # (3, 5) @ (5, 4)                 = 60
    qkvo = 3 * 4 * 4 * 4                # wq wk wv wo, each (3, 4) @ (4, 4) = 192
    experts = 3 * 2 * (8 * 4 * 3)       # 2 experts/token, w1 w3 (4, 8), w2 (8, 4) = 576
    head = 1 * 4 * 3                    # mean-pooled: one (1, 4) @ (4, 3)  = 12
    attention = 2 * 3 * 3 * 4           # QK^T and PV, T^2 pairs, head_dim 2 x 2 heads = 72
    gate = 3 * 4 * 4                    # (3, 4) @ (4, 4)                 = 48
    w = count_work(TINY_CLF, "int8")
    assert (w.int8_macs, w.fp32_macs) == (in_proj + qkvo + experts + head, attention + gate) == (840, 120)
    # int8 bytes: quantized weights 1 byte + a 4-byte scale per output channel; kept floats 4 bytes
    weight_bytes = ((5 * 4 + 4 * 4) + 4 * 4        # in_proj.weight, in_proj.bias
                    + (3 * 4 + 4 * 3)              # pos: 3 rows read, one scale per row
                    + 4 * 4 + 4 * 4                # attn_norm, ffn_norm
                    + 4 * (4 * 4 + 4 * 4)          # wq wk wv wo
                    + 4 * 4 * 4                    # gate (4, 4), float
                    + 4 * ((32 + 32) + (32 + 32) + (32 + 16))   # min(E=4, k*N=6) = 4 experts: w1 w3 w2
                    + 4 * 4                        # final_norm
                    + (4 * 3 + 4 * 3) + 4 * 3)     # head.weight, head.bias
    assert w.weight_bytes == weight_bytes == 1056
    assert w.model_bytes == 1056                   # T = max_len and every expert is read: all of it
    assert w == Work("int8", 1, 3, 2, 840, 120, 1056, 1056)
    # fp32: every MAC is float, every value 4 bytes
    w32 = count_work(TINY_CLF, "fp32")
    assert (w32.int8_macs, w32.fp32_macs) == (0, 960)
    assert w32.weight_bytes == 4 * (5 * 4 + 4 + 3 * 4 + 2 * 4 + 4 * 16 + 16 + 4 * 96 + 4 + 12 + 3) == 2108
    assert count_work(TINY_CLF, "fp16").weight_bytes == 2108 // 2


def test_hand_count_with_a_shared_expert():
    w = count_work(TINY_CLF.replace(n_shared_experts=1), "int8")
    shared_macs = 3 * 1 * (8 * 4 * 3)              # every token: w1 w3 w2 of the shared expert = 288
    shared_bytes = (32 + 32) + (32 + 32) + (32 + 16)   # = 176
    assert (w.int8_macs, w.fp32_macs, w.weight_bytes) == (840 + shared_macs, 120, 1056 + shared_bytes)


def test_hand_count_causal_lm():
    # LM, B=1, T=3: the embedding is a lookup; the head runs on every token
    qkvo = 3 * 4 * 4 * 4                # 192
    experts = 3 * 2 * 96                # 576
    head = 3 * 4 * 6                    # (3, 4) @ (4, 6) = 72
    attention = 2 * (3 * 4 // 2) * 4    # causal: T(T+1)/2 = 6 pairs, QK^T and PV = 48
    gate = 3 * 4 * 4                    # 48
    w = count_work(TINY_LM, "int8")
    assert (w.int8_macs, w.fp32_macs) == (qkvo + experts + head, attention + gate) == (840, 96)
    weight_bytes = ((3 * 4 + 4 * 3)                # embed: min(V=6, N=3) rows, one scale per row
                    + (3 * 4 + 4 * 3)              # pos
                    + 16 + 16 + 4 * 32 + 64 + 4 * 176 + 16
                    + (4 * 6 + 4 * 6) + 4 * 6)     # head.weight, head.bias
    assert w.weight_bytes == weight_bytes == 1064
    full = count_work(TINY_LM.replace(causal=False), "int8")
    assert full.fp32_macs == 2 * 9 * 4 + gate      # T^2 pairs without the mask


def test_only_touched_experts_and_rows_are_read():
    # one token, k=1: one expert of 4 and one embedding row of 6
    w = count_work(TINY_LM, "fp32", top_k=1, seq_len=1)
    one_expert = 4 * 3 * 32
    assert w.weight_bytes == 4 * (4 + 4 + 2 * 4 + 4 * 16 + 16 + 4 + 24 + 6) + one_expert
    two = count_work(TINY_LM, "fp32", top_k=1, seq_len=2)    # one more row each of embed and pos, 2 experts
    assert two.weight_bytes == w.weight_bytes + 4 * (4 + 4) + one_expert


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_model_bytes_match_the_quantizer(name):
    # the whole-model sizes agree with qz.quant.precision_sizes on real parameters
    from qz.model import init_params
    from qz.quant import precision_sizes
    cfg = preset(name)
    sizes = precision_sizes(init_params(cfg))
    for precision in PRECISIONS:
        assert model_weight_bytes(cfg, precision) == sizes[f"{precision}_bytes"], precision


def test_energy_by_hand():
    w = Work("int8", 1, 1, 1, int8_macs=10, fp32_macs=2, weight_bytes=16, model_bytes=1000)
    e = estimate_energy(w)
    # int8 MAC = 8-bit mult 0.2 + 32-bit add 0.1 pJ; fp32 MAC = 3.7 + 0.9 pJ; 16 bytes = 2 reads of 64 bits
    assert e["compute_j"] == pytest.approx((10 * 0.3 + 2 * 4.6) * 1e-12)
    assert e["memory_j"] == pytest.approx(2 * 100e-12) and e["memory_tier"] == "sram_1mb"
    assert e["total_j"] == pytest.approx(e["compute_j"] + e["memory_j"])
    dram = estimate_energy(w, cache_bytes=999)
    assert dram["memory_j"] == pytest.approx(2 * 1300e-12) and dram["memory_tier"] == "dram"
    assert HOROWITZ_45NM_PJ["fp32_mult"] == 3.7 and HOROWITZ_45NM_PJ["int8_mult"] == 0.2
    with pytest.raises(TypeError):
        HOROWITZ_45NM_PJ["fp32_mult"] = 0.0


@pytest.mark.parametrize("kw,key", [(dict(precision="int4"), "precision"), (dict(top_k=5), "top_k"),
                                    (dict(top_k=0), "top_k"), (dict(batch=0), "batch"),
                                    (dict(seq_len=4), "seq_len"), (dict(seq_len=2.0), "seq_len")])
def test_bad_arguments(kw, key):
    with pytest.raises(ValueError, match=key):
        count_work(TINY_CLF, **{"precision": "int8", **kw})


@st.composite
def configs(draw, min_width=1):
    heads = draw(st.integers(1, 3))
    lm = draw(st.booleans())
    E = draw(st.integers(1, 6))
    common = dict(d_model=heads * draw(st.integers(min_width, 4)), n_heads=heads,
                  n_layers=draw(st.integers(1, 3)), n_experts=E, top_k=draw(st.integers(1, E)),
                  d_ff=draw(st.integers(min_width, 12)),
                  max_len=draw(st.integers(2, 12)), n_shared_experts=draw(st.integers(0, 2)))
    if lm:
        return Config(**common, vocab_size=draw(st.integers(2, 50)), causal=draw(st.booleans()))
    return Config(**common, input_dim=draw(st.integers(min_width, 9)), n_classes=draw(st.integers(2, 9)))


def _measures(w, cache_bytes):
    e = estimate_energy(w, cache_bytes=cache_bytes)
    return {"int8_macs": w.int8_macs, "fp32_macs": w.fp32_macs, "weight_bytes": w.weight_bytes,
            "compute_j": e["compute_j"], "memory_j": e["memory_j"], "total_j": e["total_j"]}


@given(configs(), st.sampled_from(PRECISIONS), st.integers(1, 4), st.data(), st.integers(0, 1 << 16))
def test_more_work_never_costs_less(cfg, precision, batch, data, cache_bytes):
    k = data.draw(st.integers(1, cfg.n_experts))
    T = data.draw(st.integers(1, cfg.max_len - 1))
    base = _measures(count_work(cfg, precision, k, batch, T), cache_bytes)
    more = {"batch": count_work(cfg, precision, k, batch + 1, T),
            "seq_len": count_work(cfg, precision, k, batch, T + 1),
            "layers": count_work(cfg.replace(n_layers=cfg.n_layers + 1), precision, k, batch, T)}
    if k < cfg.n_experts:
        more["top_k"] = count_work(cfg, precision, k + 1, batch, T)
    for what, work in more.items():
        bigger = _measures(work, cache_bytes)
        for key, value in base.items():
            assert bigger[key] >= value, (what, key, value, bigger[key])
        assert bigger["int8_macs"] + bigger["fp32_macs"] > base["int8_macs"] + base["fp32_macs"], what


@given(configs(min_width=2), st.integers(1, 3), st.data())
def test_int8_costs_less_than_fp32(cfg, batch, data):
    # Widths >= 2: a width-1 weight gains nothing from int8, its 4-byte scale per channel costs as much as
    # the 3 bytes saved per value.
    T = data.draw(st.integers(1, cfg.max_len))
    w8, w32 = count_work(cfg, "int8", batch=batch, seq_len=T), count_work(cfg, "fp32", batch=batch, seq_len=T)
    assert w8.int8_macs + w8.fp32_macs == w32.fp32_macs
    assert w8.weight_bytes < w32.weight_bytes
    assert estimate_energy(w8)["total_j"] < estimate_energy(w32)["total_j"]


# ----------------------------------------------------------------------------
# RAPL
# ----------------------------------------------------------------------------
def write(root: Path, rel: str, content):
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode())


def rapl_tree(root: Path):
    base = "sys/class/powercap/"
    write(root, base + "intel-rapl:0/name", "package-0\n")
    write(root, base + "intel-rapl:0/energy_uj", "1900\n")
    write(root, base + "intel-rapl:0/max_energy_range_uj", "2000\n")
    write(root, base + "intel-rapl:1/name", "package-1\n")
    write(root, base + "intel-rapl:1/energy_uj", "500\n")
    write(root, base + "intel-rapl:1/max_energy_range_uj", "262143328850\n")
    write(root, base + "intel-rapl:0:0/name", "core\n")            # inside package 0: not counted again
    write(root, base + "intel-rapl:0:0/energy_uj", "100\n")
    write(root, base + "intel-rapl:2/name", "psys\n")              # whole platform: overlaps the packages
    write(root, base + "intel-rapl:2/energy_uj", "100\n")
    write(root, base + "intel-rapl-mmio:0/name", "package-0\n")    # the same package by another path
    write(root, base + "intel-rapl-mmio:0/energy_uj", "100\n")
    (root / base / "intel-rapl").mkdir()                           # the control type: no counter


def test_rapl_reads_package_domains(tmp_path):
    rapl_tree(tmp_path)
    assert read_rapl(str(tmp_path)) == {"intel-rapl:0": 1900, "intel-rapl:1": 500}
    assert read_rapl_ranges(str(tmp_path)) == {"intel-rapl:0": 2000, "intel-rapl:1": 262143328850}


def test_rapl_wraparound(tmp_path):
    rapl_tree(tmp_path)
    before, ranges = read_rapl(str(tmp_path)), read_rapl_ranges(str(tmp_path))
    write(tmp_path, "sys/class/powercap/intel-rapl:0/energy_uj", "100\n")     # wrapped: 1900 -> 2000 -> 100
    write(tmp_path, "sys/class/powercap/intel-rapl:1/energy_uj", "1500\n")
    after = read_rapl(str(tmp_path))
    assert rapl_joules_between(before, after, ranges) == pytest.approx((100 - 1900 + 2000 + 1000) * 1e-6)
    assert rapl_joules_between(before, after, 2000) == pytest.approx(1200e-6)     # one range for all
    assert rapl_joules_between(before, after, None) is None                        # wrapped, range unknown
    assert rapl_joules_between(before, after, {"intel-rapl:0": 1000}) is None      # range cannot explain it
    assert rapl_joules_between({"a": 5}, {"b": 9}, None) is None                   # nothing in common
    assert rapl_joules_between(None, after, ranges) is None


def test_rapl_absent(tmp_path):
    assert read_rapl(str(tmp_path)) is None and read_rapl_ranges(str(tmp_path)) is None
    measured = read_rapl()                         # the real machine: a reading or None, never an exception
    assert measured is None or all(isinstance(v, int) and v >= 0 for v in measured.values())


GARBAGE = st.one_of(st.binary(max_size=30), st.sampled_from(
    [b"", b"abc", b"nan", b"-5", b"1e400", b"\xff\xfe", b"99999999999999999999999999", "dir", "missing"]))


@given(GARBAGE, GARBAGE, GARBAGE)
def test_rapl_garbage_never_raises(name, energy, max_range):
    with tempfile.TemporaryDirectory() as d:
        dom = Path(d, "sys/class/powercap/intel-rapl:0")
        dom.mkdir(parents=True)
        for leaf, content in (("name", name), ("energy_uj", energy), ("max_energy_range_uj", max_range)):
            if content == "dir":
                (dom / leaf).mkdir()
            elif content != "missing":
                (dom / leaf).write_bytes(content)
        got = read_rapl(d)
        assert got is None or (set(got) == {"intel-rapl:0"} and got["intel-rapl:0"] >= 0)
        energy_text, name_text = _text(energy), _text(name)
        if name_text is not None and not name_text.startswith("package"):
            assert got is None                     # a readable name that is not a package: skipped
        elif energy_text is not None and energy_text.isascii() and energy_text.isdigit():
            assert got == {"intel-rapl:0": int(energy_text)}
        else:
            assert got is None


def _text(content):
    """What the reader sees in a file: stripped UTF-8 text, or None (missing, a directory, not UTF-8)."""
    try:
        return content.decode("utf-8").strip() if isinstance(content, bytes) else None
    except UnicodeDecodeError:
        return None


@given(st.sampled_from(PRECISIONS), st.integers(1, 3), st.integers(2, 8))
def test_an_expert_budget_reads_only_the_allowed_experts(precision, batch, m):
    """docs/spec.md §4: with budget m each sequence reads m experts a layer; one expert fewer is one
    expert's weights fewer a layer (for one sequence long enough to reach them all); budget E is none."""
    cfg = preset("kws")                                   # 8 experts, 2 layers, 49 frames
    E = cfg.n_experts
    none = count_work(cfg, precision, top_k=2, batch=batch, seq_len=49)
    assert count_work(cfg, precision, top_k=2, batch=batch, seq_len=49, expert_budget=E) == none
    one = count_work(cfg, precision, top_k=2, seq_len=49, expert_budget=m)
    fewer = count_work(cfg, precision, top_k=2, seq_len=49, expert_budget=m - 1)
    d, f = cfg.d_model, cfg.d_ff
    per_expert = {"fp32": 4 * 3 * d * f, "fp16": 2 * 3 * d * f,
                  "int8": 3 * d * f + 4 * (f + f + d)}[precision]   # w1, w3, w2 and their scales
    assert one.weight_bytes - fewer.weight_bytes == cfg.n_layers * per_expert
    assert fewer.top_k == min(2, m - 1) and fewer.expert_budget == m - 1
    with pytest.raises(ValueError, match="expert_budget"):
        count_work(cfg, precision, expert_budget=E + 1)
