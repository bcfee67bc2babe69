"""Tests for qz/checkpoint.py: the safetensors writer/reader and qz.save/qz.load (docs/spec.md §6).

Interop tests check against the `safetensors` package (skipped if it is not
installed): its reader must read our files, ours must read its files, and for
the same tensors both writers must produce the same bytes.
"""
from __future__ import annotations

import json
import os
import re
import struct
import sys
import time
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from qz import checkpoint as ck
from qz.checkpoint import CheckpointError, load, read_safetensors, save, write_safetensors
from qz.config import Config, param_shapes

# One row per supported safetensors dtype, in the package's enum order.
DTYPES = {"BOOL": np.bool_, "U8": np.uint8, "I8": np.int8, "I16": np.int16,
          "U16": np.uint16, "F16": np.float16, "I32": np.int32, "U32": np.uint32,
          "F32": np.float32, "F64": np.float64, "I64": np.int64, "U64": np.uint64}

CLF = Config(d_model=8, n_heads=2, n_layers=1, n_experts=2, top_k=1, d_ff=6, max_len=4,
             input_dim=3, n_classes=2)
LM = Config(d_model=8, n_heads=2, n_layers=2, n_experts=3, top_k=2, d_ff=4, max_len=5,
            vocab_size=11, n_shared_experts=1)


def random_array(rng, shape, dtype):
    dtype = np.dtype(dtype)
    if dtype.kind == "b":
        return rng.integers(0, 2, size=shape).astype(bool)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
    return rng.normal(size=shape).astype(dtype) * 100


def mixed_tensors(seed=0):
    """Every dtype, plus a 0-d tensor, empty tensors and names sharing a dtype."""
    rng = np.random.default_rng(seed)
    t = {f"t.{code}": random_array(rng, (2, 3), dt) for code, dt in DTYPES.items()}
    t["scalar"] = np.array(3.5)
    t["empty"] = np.zeros((0, 4), np.float32)
    t["empty_i8"] = np.zeros((3, 0, 2), np.int8)
    t["a.f32"] = random_array(rng, (5,), np.float32)
    t["Z.f32"] = random_array(rng, (1, 1, 1), np.float32)
    return t


def model_params(cfg, seed, dtype):
    rng = np.random.default_rng(seed)
    return {k: rng.normal(size=s).astype(dtype) for k, s in param_shapes(cfg).items()}


def assert_same_tensors(got, want, context=""):
    assert sorted(got) == sorted(want), f"{context}: names {sorted(got)} != {sorted(want)}"
    for name, w in want.items():
        g, w = got[name], np.asarray(w)
        assert g.shape == w.shape, f"{context} {name}: shape {g.shape} != {w.shape}"
        assert g.dtype == w.dtype.newbyteorder("="), f"{context} {name}: dtype {g.dtype} != {w.dtype}"
        assert g.astype("<" + g.dtype.str[1:]).tobytes() == w.astype("<" + w.dtype.str[1:]).tobytes(), \
            f"{context} {name}: bytes differ"


def raw_file(path, header, data=b"", n=None):
    """Write a hand-made safetensors file: header is a JSON-able object or raw bytes."""
    hb = header if isinstance(header, bytes) else json.dumps(header).encode()
    hb += b" " * (-len(hb) % 8)
    path.write_bytes(struct.pack("<Q", len(hb) if n is None else n) + hb + data)
    return path


def f32(begin, end, shape=None):
    return {"dtype": "F32", "shape": [(end - begin) // 4] if shape is None else shape,
            "data_offsets": [begin, end]}


def no_temp_files(directory, keep):
    left = sorted(set(os.listdir(directory)) - set(keep))
    assert not left, f"temp files left behind: {left}"


# ------------------------------------------------------------- round trips

@pytest.mark.parametrize("metadata", [None, {}, {"a": "1", "ü\n": "é\u2028\x01\"\\"}])
def test_round_trip_ours(tmp_path, metadata):
    t = mixed_tensors()
    path = tmp_path / "x.safetensors"
    write_safetensors(path, t, metadata)
    got, meta = read_safetensors(path)
    assert_same_tensors(got, t, "ours->ours")
    assert meta == (metadata or {}), f"metadata {meta!r} != {metadata!r}"
    for name, arr in got.items():
        assert arr.flags.writeable and arr.flags.c_contiguous, f"{name}: not a writable C array"
        assert arr.dtype.isnative, f"{name}: dtype {arr.dtype} is not native-endian"


def test_big_endian_and_strided_inputs(tmp_path):
    base = np.arange(24, dtype=np.float64).reshape(4, 6)
    t = {"be": base.astype(">f8"), "be_i4": np.arange(5, dtype=">i4"), "strided": base[::2, ::3],
         "transposed": base.T, "be_f16": np.array([1.5, -2.0], dtype=">f2")}
    path = tmp_path / "x.safetensors"
    write_safetensors(path, t)
    got, _ = read_safetensors(path)
    for name, arr in t.items():
        np.testing.assert_array_equal(got[name], arr, err_msg=name)
        assert got[name].dtype == arr.dtype.newbyteorder("="), name
    # the raw bytes of the big-endian input must be stored little-endian
    raw = path.read_bytes()
    assert np.arange(5, dtype="<i4").tobytes() in raw, "big-endian input not byte-swapped on disk"


def test_empty_file_of_tensors(tmp_path):
    path = str(tmp_path / "x.safetensors")  # str paths work as well as pathlib ones
    write_safetensors(path, {})
    raw = open(path, "rb").read()
    assert raw == b"\x08" + b"\x00" * 7 + b"{}      ", raw
    assert read_safetensors(path) == ({}, {})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(t=st.dictionaries(
    st.text(min_size=0, max_size=6).filter(lambda s: s != "__metadata__"),
    st.sampled_from(sorted(DTYPES)).flatmap(lambda code: hnp.arrays(
        DTYPES[code], hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=3))),
    max_size=5))
def test_round_trip_random(tmp_path, t):
    assume(all(_utf8(name) for name in t))
    path = tmp_path / "r.safetensors"
    write_safetensors(path, t, {"k": "v"})
    got, meta = read_safetensors(path)
    assert_same_tensors(got, t, "random round trip")
    assert meta == {"k": "v"}


def _utf8(s):
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# ------------------------------------------------------------- interop with the package

def _le(t):
    # the package writes arr.ctypes.data verbatim: give it C-contiguous arrays
    return {k: np.ascontiguousarray(v) if np.ndim(v) else np.asarray(v) for k, v in t.items()}


def test_package_reads_ours(tmp_path):
    st_np = pytest.importorskip("safetensors.numpy")
    safetensors = pytest.importorskip("safetensors")
    t = mixed_tensors(1)
    path = tmp_path / "ours.safetensors"
    write_safetensors(path, t, {"format": "qz", "x": "{\"a\": [1, 2]}"})
    assert_same_tensors(st_np.load_file(str(path)), t, "ours->package")
    with safetensors.safe_open(str(path), framework="np") as f:
        assert f.metadata() == {"format": "qz", "x": "{\"a\": [1, 2]}"}, f.metadata()


def test_ours_reads_package(tmp_path):
    st_np = pytest.importorskip("safetensors.numpy")
    t = mixed_tensors(2)
    path = tmp_path / "pkg.safetensors"
    st_np.save_file(_le(t), str(path), metadata={"a": "b", "c": ""})
    got, meta = read_safetensors(path)
    assert_same_tensors(got, t, "package->ours")
    assert meta == {"a": "b", "c": ""}, meta


BYTE_CASES = {
    "mixed": (mixed_tensors(3), None),
    "mixed+empty-meta": (mixed_tensors(4), {}),
    "one-meta-key": ({"w": np.ones((3, 3), np.float32), "b": np.zeros(3, np.float64)}, {"format": "qz"}),
    "scalars": ({"s": np.array(1, np.int8), "t": np.array(2.0, np.float32), "u": np.array(True)}, None),
    "empties": ({"e1": np.zeros((0,), np.float64), "e2": np.zeros((2, 0), np.uint16)}, {"k": ""}),
    "unicode-names": ({"é": np.ones(2, np.float32), "z": np.ones(1, np.float32), "Z": np.ones(1, np.float32),
                       "日本": np.ones(3, np.float32), "\x7f": np.ones(1, np.float32)},
                      {"é\u2028": "\x01\n\t"}),
    "none": ({}, None),
    "model": (model_params(LM, 0, np.float32), {"config": json.dumps(LM.to_dict())}),
}


@pytest.mark.parametrize("case", sorted(BYTE_CASES))
def test_bytes_identical_to_package(tmp_path, case):
    st_np = pytest.importorskip("safetensors.numpy")
    t, metadata = BYTE_CASES[case]
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    write_safetensors(ours, t, metadata)
    st_np.save_file(_le(t), str(theirs), metadata=metadata)
    a, b = ours.read_bytes(), theirs.read_bytes()
    assert a == b, f"{case}: files differ\nours:   {a[:300]!r}\ntheirs: {b[:300]!r}"


def test_bytes_match_package_up_to_metadata_order(tmp_path):
    # The package writes __metadata__ in Rust hash order (differs per run); we sort.
    st_np = pytest.importorskip("safetensors.numpy")
    t, metadata = mixed_tensors(5), {k: k * 2 for k in "qwertyuiop"}
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    write_safetensors(ours, t, metadata)
    st_np.save_file(_le(t), str(theirs), metadata=metadata)
    a, b = ours.read_bytes(), theirs.read_bytes()
    assert len(a) == len(b) and a[:8] == b[:8], "header lengths differ"
    n = 8 + int.from_bytes(a[:8], "little")
    assert a[n:] == b[n:], "data buffers differ"
    ha, hb = json.loads(a[8:n]), json.loads(b[8:n])
    assert ha == hb, "headers differ"
    assert list(ha) == list(hb), f"tensor order differs: {list(ha)} != {list(hb)}"
    assert list(ha["__metadata__"]) == sorted(metadata), "our metadata keys are not sorted"


# ------------------------------------------------------------- writer errors and atomicity

@pytest.mark.parametrize("tensors, metadata, error", [
    ({1: np.zeros(1)}, None, TypeError),
    ({"a": np.zeros(1)}, {"k": 1}, TypeError),
    ({"a": np.zeros(1)}, {2: "v"}, TypeError),
    ({"a": np.zeros(2, np.complex64)}, None, ValueError),
    ({"a": np.array(["x"])}, None, ValueError),
    ({"a": np.array([object()])}, None, ValueError),
    pytest.param({"a": np.zeros(2, np.longdouble)}, None, ValueError, marks=pytest.mark.skipif(
        np.dtype(np.longdouble).itemsize == 8, reason="longdouble is float64 here")),
    ({"__metadata__": np.zeros(1)}, None, ValueError),
    ({"\ud800": np.zeros(1)}, None, ValueError),
], ids=["int-name", "int-meta-value", "int-meta-key", "complex", "str-dtype", "object", "longdouble",
        "reserved-name", "lone-surrogate"])
def test_write_rejects_programming_errors(tmp_path, tensors, metadata, error):
    path = tmp_path / "x.safetensors"
    path.write_bytes(b"old")
    with pytest.raises(error):
        write_safetensors(path, tensors, metadata)
    assert path.read_bytes() == b"old", "old file changed by a failed write"
    no_temp_files(tmp_path, ["x.safetensors"])


@pytest.mark.parametrize("broken", ["replace", "fsync", "write"])
def test_failed_write_keeps_old_file(tmp_path, monkeypatch, broken):
    path = tmp_path / "x.safetensors"
    write_safetensors(path, {"a": np.arange(4.0)})
    old = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk on fire")
    if broken == "write":
        # fail after some bytes reached the temp file
        monkeypatch.setattr(ck, "_atomic_write", _failing_after_header(ck._atomic_write))
    else:
        monkeypatch.setattr(ck.os, broken, boom)
    with pytest.raises(OSError, match="disk on fire"):
        write_safetensors(path, {"a": np.arange(8.0), "b": np.ones(3, np.int32)})
    monkeypatch.undo()
    assert path.read_bytes() == old, f"{broken}: old file changed"
    no_temp_files(tmp_path, ["x.safetensors"])
    assert_same_tensors(read_safetensors(path)[0], {"a": np.arange(4.0)}, broken)


def _failing_after_header(atomic_write):
    def wrapped(path, write):
        def write_then_fail(f):
            f.write(b"partial header bytes")
            raise OSError("disk on fire")
        return atomic_write(path, write_then_fail)
    return wrapped


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_file_mode(tmp_path):
    path = tmp_path / "x.safetensors"
    write_safetensors(path, {"a": np.zeros(1)})
    assert path.stat().st_mode & 0o777 == 0o644, oct(path.stat().st_mode)
    path.chmod(0o600)
    write_safetensors(path, {"a": np.ones(1)})
    assert path.stat().st_mode & 0o777 == 0o600, "overwrite did not keep the file's mode"


# ------------------------------------------------------------- reader rejections

def _rejections():
    """(id, make(path) -> path, word the message must contain)."""
    ok = {"a": f32(0, 8)}
    data8 = np.arange(2, dtype="<f4").tobytes()
    cases = [
        ("missing", lambda p: p.parent / "nope.safetensors", "cannot read"),
        ("directory", lambda p: p.parent, "cannot read"),
        ("empty", lambda p: (p.write_bytes(b""), p)[1], "too short"),
        ("7-bytes", lambda p: (p.write_bytes(b"\x08" + b"\0" * 6), p)[1], "too short"),
        ("n=0", lambda p: raw_file(p, b"", n=0), "is 0"),
        ("n>100MB", lambda p: raw_file(p, b"{}", n=100_000_001), "limit"),
        ("n=2**64-1", lambda p: raw_file(p, b"{}", n=2**64 - 1), "limit"),
        ("n-past-eof", lambda p: raw_file(p, b"{}", n=16), "past the end"),
        ("not-utf8", lambda p: raw_file(p, b'{"\xff":1}'), "UTF-8"),
        ("bad-json", lambda p: raw_file(p, b'{"a":'), "not valid JSON"),
        ("trailing-nul", lambda p: raw_file(p, b"{}\0\0\0\0\0\0"), "not valid JSON"),
        ("json-list", lambda p: raw_file(p, b"[]"), "not an object"),
        ("json-string", lambda p: raw_file(p, b'"{}"'), "not an object"),
        ("dup-top", lambda p: raw_file(p, b'{"a":%s,"a":%s}' % ((json.dumps(f32(0, 8)).encode(),) * 2),
                                       data8), "duplicate"),
        ("dup-field", lambda p: raw_file(p, b'{"a":{"dtype":"F32","dtype":"F32",'
                                            b'"shape":[2],"data_offsets":[0,8]}}', data8), "duplicate"),
        ("dup-meta", lambda p: raw_file(p, b'{"__metadata__":{"k":"1","k":"2"}}'), "duplicate"),
        ("nan", lambda p: raw_file(p, b'{"a":{"dtype":"F32","shape":[NaN],"data_offsets":[0,8]}}',
                                   data8), "NaN"),
        ("infinity", lambda p: raw_file(p, b'{"a":{"dtype":"F32","shape":[-Infinity],"data_offsets":[0,8]}}',
                                        data8), "Infinity"),
        ("deep-json", lambda p: raw_file(p, b"[" * 100_000 + b"]" * 100_000), "JSON"),
        ("huge-int", lambda p: raw_file(p, b'{"a":{"dtype":"F32","shape":[' + b"9" * 5000
                                        + b'],"data_offsets":[0,8]}}', data8), "JSON"),
        ("entry-list", lambda p: raw_file(p, {"a": [1, 2]}), "not an object"),
        ("entry-missing", lambda p: raw_file(p, {"a": {"dtype": "F32", "shape": [2]}}, data8), "missing"),
        ("entry-extra", lambda p: raw_file(p, {"a": {**f32(0, 8), "offsets": [0, 8]}}, data8), "extra"),
        ("dtype-bf16", lambda p: raw_file(p, {"a": {**f32(0, 4), "dtype": "BF16"}},
                                          data8[:4]), "unknown dtype"),
        ("dtype-lower", lambda p: raw_file(p, {"a": {**f32(0, 8), "dtype": "f32"}}, data8), "unknown dtype"),
        ("dtype-int", lambda p: raw_file(p, {"a": {**f32(0, 8), "dtype": 4}}, data8), "unknown dtype"),
        ("dtype-c64", lambda p: raw_file(p, {"a": {**f32(0, 8), "dtype": "C64", "shape": [1]}},
                                         data8), "unknown dtype"),
        ("shape-str", lambda p: raw_file(p, {"a": f32(0, 8, "2")}, data8), "shape"),
        ("shape-negative", lambda p: raw_file(p, {"a": f32(0, 8, [-2])}, data8), "shape"),
        ("shape-float", lambda p: raw_file(p, {"a": f32(0, 8, [2.0])}, data8), "shape"),
        ("shape-bool", lambda p: raw_file(p, {"a": f32(0, 4, [True])}, data8[:4]), "shape"),
        ("shape-null", lambda p: raw_file(p, {"a": f32(0, 8, None) | {"shape": None}}, data8), "shape"),
        ("shape-65-dims", lambda p: raw_file(p, {"a": f32(0, 4, [1] * 65)}, data8[:4]), "dimensions"),
        ("shape-huge", lambda p: raw_file(p, {"a": f32(0, 0, [2**62, 4, 0])}), "too large"),
        ("offsets-one", lambda p: raw_file(p, {"a": {**f32(0, 8), "data_offsets": [8]}},
                                           data8), "data_offsets"),
        ("offsets-negative", lambda p: raw_file(p, {"a": {**f32(0, 8), "data_offsets": [-8, 0]}},
                                                data8), "data_offsets"),
        ("offsets-float", lambda p: raw_file(p, {"a": {**f32(0, 8), "data_offsets": [0, 8.0]}},
                                             data8), "data_offsets"),
        ("offsets-bool", lambda p: raw_file(p, {"a": {**f32(0, 8), "data_offsets": [False, 8]}},
                                            data8), "data_offsets"),
        ("offsets-reversed", lambda p: raw_file(p, {"a": {**f32(0, 8), "data_offsets": [8, 0]}},
                                                data8), "begin > end"),
        ("nbytes-mismatch", lambda p: raw_file(p, {"a": f32(0, 4, [2])}, data8[:4]), "needs"),
        ("overlap", lambda p: raw_file(p, {"a": f32(0, 8), "b": f32(4, 12)}, data8 + data8[:4]), "overlap"),
        ("hole", lambda p: raw_file(p, {"a": f32(0, 4), "b": f32(8, 12)}, data8 + data8[:4]), "hole"),
        ("slack-at-end", lambda p: raw_file(p, ok, data8 + b"\0" * 4), "cover"),
        ("data-too-short", lambda p: raw_file(p, ok, data8[:4]), "cover"),
        ("data-missing", lambda p: raw_file(p, ok), "cover"),
        ("meta-str", lambda p: raw_file(p, {"__metadata__": "x"}), "__metadata__"),
        ("meta-list", lambda p: raw_file(p, {"__metadata__": ["x"]}), "__metadata__"),
        ("meta-int-value", lambda p: raw_file(p, {"__metadata__": {"k": 1}}), "__metadata__"),
        ("meta-null-value", lambda p: raw_file(p, {"__metadata__": {"k": None}}), "__metadata__"),
        ("surrogate-name", lambda p: raw_file(p, b'{"\\ud800":%s}' % json.dumps(f32(0, 8)).encode(),
                                              data8), "Unicode"),
        ("surrogate-meta", lambda p: raw_file(p, b'{"__metadata__":{"k":"\\udc00"}}'), "Unicode"),
        ("bool-byte-2", lambda p: raw_file(p, {"a": {"dtype": "BOOL", "shape": [2], "data_offsets": [0, 2]}},
                                           b"\x01\x02"), "BOOL"),
        # the format's own rules, which json.loads does not enforce
        ("leading-space", lambda p: raw_file(p, b" {}"), "start with"),
        ("tab-padding", lambda p: raw_file(p, b"{}\t"), "padding"),
        ("newline-padding", lambda p: raw_file(p, b"{}\n"), "padding"),
        # valid JSON that parses to inf, and duplicates below the entry level
        ("1e999-shape", lambda p: raw_file(p, b'{"a":{"dtype":"F32","shape":[1e999],"data_offsets":[0,8]}}',
                                           data8), "infinity"),
        ("1e999-meta", lambda p: raw_file(p, b'{"__metadata__":{"k":-1e999}}'), "infinity"),
        ("dup-deep", lambda p: raw_file(p, b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8],'
                                           b'"x":{"y":1,"y":2}}}', data8), "duplicate"),
        ("shape-product-overflow", lambda p: raw_file(p, {"a": f32(0, 0, [2**40] * 3 + [0])}), "too large"),
        ("shape-huge-dims", lambda p: raw_file(p, {"a": f32(0, 0, [10**4000] * 64)}), "too large"),
        ("shape-bool-late", lambda p: raw_file(p, {"a": f32(0, 8, [2, False])}, data8), "shape"),
        ("offsets-true", lambda p: raw_file(p, {"a": {**f32(0, 8), "data_offsets": [0, True]}},
                                            data8), "data_offsets"),
        ("offsets-2**64", lambda p: raw_file(p, {"a": {**f32(0, 8), "data_offsets": [2**64, 2**64 + 8]}},
                                             data8), "hole"),
        ("zero-size-inside", lambda p: raw_file(p, {"a": f32(0, 8), "e": f32(4, 4, [0])}, data8), "overlap"),
    ]
    return cases


@pytest.mark.parametrize("make, word", [c[1:] for c in _rejections()], ids=[c[0] for c in _rejections()])
def test_reader_rejects(tmp_path, make, word):
    path = make(tmp_path / "bad.safetensors")
    with pytest.raises(CheckpointError) as info:
        read_safetensors(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: "), f"message does not name the file: {msg!r}"
    assert word.lower() in msg.lower(), f"message {msg!r} does not mention {word!r}"
    assert "\n" not in msg, f"message is not one line: {msg!r}"


def test_messages_stay_short(tmp_path):
    # A hostile header can put megabytes in a name or a value; the message stays one short line.
    path = raw_file(tmp_path / "x", {"n" * 100_000: {"dtype": "X" * 100_000, "shape": [1] * 60_000,
                                                      "data_offsets": [0, 0]}})
    with pytest.raises(CheckpointError) as info:
        read_safetensors(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: ") and "unknown dtype" in msg, msg[:200]
    assert len(msg) < len(str(path)) + 400, f"message is {len(msg)} characters"


def test_int_digit_limit_does_not_depend_on_the_interpreter(tmp_path):
    # With the interpreter's limit lifted, a huge integer would parse in quadratic time.
    if not hasattr(sys, "set_int_max_str_digits"):
        pytest.skip("no int digit limit in this Python")
    path = raw_file(tmp_path / "x",
                    b'{"a":{"dtype":"F32","shape":[' + b"9" * 5000 + b'],"data_offsets":[0,0]}}')
    old = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)
    try:
        with pytest.raises(CheckpointError, match="5000 digits") as info:
            read_safetensors(path)
    finally:
        sys.set_int_max_str_digits(old)
    assert str(info.value).startswith(f"{path}: "), str(info.value)


@pytest.mark.parametrize("make", [
    lambda p: raw_file(p, b"{}", n=99_000_000),
    lambda p: raw_file(p, {"a": {"dtype": "U8", "shape": [2**40], "data_offsets": [0, 2**40]}}),
    lambda p: raw_file(p, {"a": {"dtype": "F64", "shape": [2**27], "data_offsets": [0, 2**30]}}, b"\0" * 8),
], ids=["header-99MB", "tensor-1TB", "tensor-1GB-8-bytes-present"])
def test_claimed_sizes_are_not_allocated(tmp_path, make):
    # Sizes are checked against the real file before f.read(n) / np.empty allocate them.
    path = make(tmp_path / "x")
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError) as info:
            read_safetensors(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(info.value).startswith(f"{path}: "), str(info.value)
    assert peak < 1_000_000, f"peak {peak} bytes allocated for a {path.stat().st_size}-byte file"


def test_checkpoint_error_is_value_error():
    assert issubclass(CheckpointError, ValueError)


def test_reader_accepts_unusual_but_valid(tmp_path):
    # entries in any header order, zero-size tensors anywhere, no padding, no __metadata__
    data = np.arange(3, dtype="<f4").tobytes() + np.arange(2, dtype="<i2").tobytes()
    hb = json.dumps({"z": {"dtype": "I16", "shape": [2], "data_offsets": [12, 16]},
                     "e": {"dtype": "F64", "shape": [0], "data_offsets": [12, 12]},
                     "a": f32(0, 12),
                     "e0": {"dtype": "U8", "shape": [4, 0], "data_offsets": [0, 0]}}).encode()
    path = tmp_path / "odd.safetensors"
    path.write_bytes(struct.pack("<Q", len(hb)) + hb + data)
    got, meta = read_safetensors(path)
    assert meta == {}
    np.testing.assert_array_equal(got["a"], np.arange(3, dtype=np.float32))
    np.testing.assert_array_equal(got["z"], np.arange(2, dtype=np.int16))
    assert got["e"].shape == (0,) and got["e0"].shape == (4, 0) and got["e0"].dtype == np.uint8


# ------------------------------------------------------------- model files

@pytest.mark.parametrize("cfg", [CLF, LM], ids=["classifier", "lm"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("with_state", [False, True])
def test_model_round_trip(tmp_path, cfg, dtype, with_state):
    params = model_params(cfg, 7, dtype)
    state = None
    if with_state:
        rng = np.random.default_rng(8)
        state = {**{f"m.{k}": rng.normal(size=v.shape).astype(dtype) for k, v in params.items()},
                 "step": np.array(123, np.int64), "rng": np.arange(4, dtype=np.uint64)}
    meta_in = {"quant": {"ranges": {"blocks.0.x": [-1.5, 2.25]}}, "epoch": 3, "note": "hi",
               "lr": 1e-3, "top_k_list": [1, 2], "flag": None}
    path = tmp_path / "model.safetensors"
    save(path, params, cfg, state=state, **meta_in)
    got, cfg2, meta = load(path)
    assert cfg2 == cfg, f"config {cfg2} != {cfg}"
    assert list(got) == list(param_shapes(cfg)), "params not returned in param_shapes order"
    assert_same_tensors(got, params, "model params")
    assert_same_tensors(meta.pop("state"), state or {}, "state")
    assert meta == meta_in, f"meta {meta} != {meta_in}"


def test_model_file_readable_by_package(tmp_path):
    safetensors = pytest.importorskip("safetensors")
    path = tmp_path / "model.safetensors"
    save(path, model_params(CLF, 0, np.float32), CLF, epoch=2)
    with safetensors.safe_open(str(path), framework="np") as f:
        md = f.metadata()
        assert md["format"] == "qz" and json.loads(md["epoch"]) == 2, md
        assert Config.from_dict(json.loads(md["config"])) == CLF
        assert set(f.keys()) == set(param_shapes(CLF))


def _bad_params(kind):
    p = model_params(CLF, 0, np.float32)
    if kind == "missing":
        del p["pos"]
    elif kind == "extra":
        p["bogus"] = np.zeros(1, np.float32)
    elif kind == "shape":
        p["pos"] = np.zeros((5, 8), np.float32)
    elif kind == "int":
        p["pos"] = np.zeros((4, 8), np.int32)
    return p


@pytest.mark.parametrize("kind, kwargs, error, word", [
    ("missing", {}, ValueError, "pos"),
    ("extra", {}, ValueError, "bogus"),
    ("shape", {}, ValueError, "pos"),
    ("int", {}, ValueError, "pos"),
    ("ok", {"config": 1}, ValueError, "reserved"),
    ("ok", {"format_version": "2"}, ValueError, "reserved"),
    ("ok", {"x": float("nan")}, ValueError, "x"),
    ("ok", {"x": object()}, TypeError, "x"),
    ("ok", {"format": "qz"}, ValueError, "reserved"),
])
def test_save_rejects(tmp_path, kind, kwargs, error, word):
    path = tmp_path / "m.safetensors"
    path.write_bytes(b"old")
    with pytest.raises(error, match=word):
        save(path, _bad_params(kind), CLF, **kwargs)
    assert path.read_bytes() == b"old", "save touched the file before failing"
    no_temp_files(tmp_path, ["m.safetensors"])


def _model_file(path, edit):
    """A valid CLF model file with its tensors/metadata edited by `edit(tensors, metadata)`."""
    tensors = model_params(CLF, 0, np.float32)
    metadata = {"format": "qz", "format_version": "1", "config": json.dumps(CLF.to_dict()), "epoch": "1"}
    edit(tensors, metadata)
    write_safetensors(path, tensors, metadata)
    return path


def _set(d, key, value):
    if value is None:
        d.pop(key)
    else:
        d[key] = value


@pytest.mark.parametrize("edit, word", [
    (lambda t, m: _set(m, "format", None), "format"),
    (lambda t, m: _set(m, "format", "pt"), "format"),
    (lambda t, m: _set(m, "format_version", "2"), "format_version"),
    (lambda t, m: _set(m, "format_version", None), "format_version"),
    (lambda t, m: _set(m, "config", None), "config"),
    (lambda t, m: _set(m, "config", "{"), "config"),
    (lambda t, m: _set(m, "config", "[1]"), "config"),
    (lambda t, m: _set(m, "config", json.dumps({**CLF.to_dict(), "n_heads": 3})), "n_heads"),
    (lambda t, m: _set(m, "config", json.dumps({**CLF.to_dict(), "extra": 3})), "extra"),
    (lambda t, m: _set(m, "config", json.dumps({**CLF.to_dict(), "d_model": 8.0})), "d_model"),
    (lambda t, m: _set(m, "config", json.dumps({**CLF.to_dict(), "n_layers": 10**12})), "n_layers"),
    (lambda t, m: _set(m, "config", '{"d_model": 8, "d_model": 8}'), "duplicate"),
    (lambda t, m: _set(m, "epoch", "NaN"), "epoch"),
    (lambda t, m: _set(m, "epoch", "{\"a\": 1, \"a\": 2}"), "duplicate"),
    (lambda t, m: _set(m, "epoch", "not json"), "epoch"),
    (lambda t, m: _set(m, "state", "{}"), "reserved"),
    (lambda t, m: _set(t, "blocks.0.wq", None), "blocks.0.wq"),
    (lambda t, m: _set(t, "blocks.1.wq", np.zeros((8, 8), np.float32)), "blocks.1.wq"),
    (lambda t, m: _set(t, "head.bias", np.zeros(3, np.float32)), "head.bias"),
    (lambda t, m: _set(t, "head.bias", np.zeros((1, 2), np.float32)), "head.bias"),
    (lambda t, m: _set(t, "head.bias", np.zeros(2, np.int32)), "dtype"),
    (lambda t, m: _set(t, "head.bias", np.zeros(2, bool)), "dtype"),
    (lambda t, m: _set(m, "epoch", "1e999"), "epoch"),
    (lambda t, m: _set(m, "config", json.dumps(CLF.to_dict()).replace('"d_model": 8', '"d_model": 1e999')),
     "config"),
    (lambda t, m: _set(m, "config", json.dumps({**CLF.to_dict(), "d_model": True})), "d_model"),
    (lambda t, m: _set(m, "config", json.dumps({**CLF.to_dict(), "d_model": "x" * 10**5})), "d_model"),
    (lambda t, m: _set(m, "format", "x" * 10**5), "format"),
], ids=["no-format", "format-pt", "version-2", "no-version", "no-config", "config-json", "config-list",
        "config-n_heads", "config-extra-key", "config-float", "config-huge-layers", "config-dup",
        "meta-nan", "meta-dup", "meta-not-json", "meta-state", "missing-param", "extra-param",
        "wrong-shape", "wrong-ndim", "int-param", "bool-param", "meta-1e999", "config-1e999",
        "config-bool", "config-long-string", "format-long"])
def test_load_rejects(tmp_path, edit, word):
    path = _model_file(tmp_path / "m.safetensors", edit)
    with pytest.raises(CheckpointError) as info:
        load(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: "), f"message does not name the file: {msg!r}"
    assert word.lower() in msg.lower(), f"message {msg!r} does not mention {word!r}"
    assert len(msg) < len(str(path)) + 400, f"message is {len(msg)} characters"


def test_other_bundles_read_but_do_not_load(tmp_path):
    # read_safetensors stays generic (an int8 export is read elsewhere); load wants a qz model.
    path = tmp_path / "int8.safetensors"
    t = {"w_q": np.arange(-6, 6, dtype=np.int8).reshape(3, 4), "w_scale": np.ones(3, np.float32)}
    write_safetensors(path, t, {"format": "qz-int8"})
    assert_same_tensors(read_safetensors(path)[0], t, "int8 bundle")
    with pytest.raises(CheckpointError, match="not a qz checkpoint") as info:
        load(path)
    assert str(info.value).startswith(f"{path}: "), str(info.value)


def test_load_accepts_float16_and_no_state(tmp_path):
    path = _model_file(tmp_path / "m.safetensors",
                       lambda t, m: t.update({k: v.astype(np.float16) for k, v in t.items()}))
    params, cfg, meta = load(path)
    assert cfg == CLF and meta == {"epoch": 1, "state": {}}, meta
    assert all(v.dtype == np.float16 for v in params.values())


# ------------------------------------------------------------- fuzzing: CheckpointError or success
#
# One mutator, two drivers. `mutate` only asks its rng for `integers(low, high)`,
# so a seeded np.random.Generator runs >= 10,000 cases per CI run in seconds,
# and `DrawRng` answers the same calls with hypothesis draws, which shrink.
# scripts/fuzz_checkpoint.py imports `mutate`, `check_file` and `base_checkpoints`
# from here, so the long fuzz runs exactly what CI runs.

class Raw(str):
    """A JSON token written verbatim: NaN, 1e999, a 5000-digit integer."""


class Pairs(list):
    """A JSON object as a list of (key, value), so keys can repeat."""


def to_json(v) -> str:
    if isinstance(v, Raw):
        return str(v)
    if isinstance(v, Pairs):
        return "{" + ",".join(json.dumps(k) + ":" + to_json(x) for k, x in v) + "}"
    if isinstance(v, list):
        return "[" + ",".join(map(to_json, v)) + "]"
    return json.dumps(v)


def _as_pairs(v):
    if isinstance(v, dict):
        return Pairs((k, _as_pairs(x)) for k, x in v.items())
    if isinstance(v, list):
        return [_as_pairs(x) for x in v]
    return v


_INTS = [0, 1, 2, 3, 4, 7, 8, 9, -1, -8, 2**31, 2**32 - 1, 2**62, 2**63 - 1, 2**63, 2**64 - 1,
         2**64, 10**30, 100_000_001]
_ODD = [True, False, None, 2.0, -0.0, "8", "", [], Pairs(), [[1]], Raw("NaN"), Raw("Infinity"),
        Raw("-Infinity"), Raw("1e999"), Raw("-1e999"), Raw("9" * 5000), Raw("1" + "0" * 25),
        Raw("[" * 12 + "]" * 12)]
_CODES = list(DTYPES) + ["BF16", "F8_E4M3", "C64", "f32", "", "F32 "]
_SAME_SIZE = [["BOOL", "U8", "I8"], ["I16", "U16", "F16"], ["I32", "U32", "F32"], ["F64", "I64", "U64"]]
_BYTES = b"\x00\xff\x7f\x80\xc3{}[]\",: \\0123456789eE.-\t\n"


def _int(rng, low, high):  # in [low, high), like Generator.integers
    return int(rng.integers(low, high))


def _pick(rng, seq):
    return seq[_int(rng, 0, len(seq))]


def _some_int(rng):
    return _pick(rng, _INTS) if _int(rng, 0, 2) else _int(rng, -3, 40)


def _odd(rng):
    return _pick(rng, _ODD) if _int(rng, 0, 3) else _some_int(rng)


def _header_end(b):
    return min(len(b), 8 + int.from_bytes(b[:8], "little")) if len(b) >= 8 else 0


def _position(b, rng):
    end = _header_end(b)  # half the hits land in the header, where the checks are
    return _int(rng, 8, end) if end > 8 and _int(rng, 0, 2) else _int(rng, 0, len(b))


def _flip_bits(b, rng):
    b = bytearray(b)
    for _ in range(_int(rng, 1, 5) if b else 0):
        b[_position(b, rng)] ^= 1 << _int(rng, 0, 8)
    return bytes(b)


def _flip_data(b, rng):
    b, end = bytearray(b), _header_end(b)  # bit rot in the tensor bytes: must still read
    for _ in range(_int(rng, 1, 5) if len(b) > end else 0):
        b[_int(rng, end, len(b))] ^= 1 << _int(rng, 0, 8)
    return bytes(b)


def _set_bytes(b, rng):
    b = bytearray(b)
    for _ in range(_int(rng, 1, 5) if b else 0):
        b[_position(b, rng)] = _pick(rng, _BYTES) if _int(rng, 0, 2) else _int(rng, 0, 256)
    return bytes(b)


def _truncate(b, rng):
    return b[:_int(rng, 0, len(b))] if b else b


def _insert(b, rng):
    at = _position(b, rng) if b else 0
    return b[:at] + bytes(_pick(rng, _BYTES) for _ in range(_int(rng, 1, 17))) + b[at:]


def _delete(b, rng):
    at = _position(b, rng) if b else 0
    return b[:at] + b[at + _int(rng, 1, 17):]


def _set_length(b, rng):
    n = int.from_bytes(b[:8], "little")
    value = _pick(rng, [n + _int(rng, -9, 10), 0, 7, len(b), len(b) - 8, 100_000_000, 100_000_001,
                        2**63, 2**64 - 1, _int(rng, 0, 2**31) << 32 | _int(rng, 0, 2**31)])
    return (value % 2**64).to_bytes(8, "little") + b[8:]


def _edit_json(b, rng):
    """Parse the header, edit it as (key, value) pairs, write it back: still valid JSON text
    most of the time, so the edit reaches the field checks instead of the parser."""
    end = _header_end(b)
    try:
        header = json.loads(b[8:end])
        if not isinstance(header, dict) or not header:
            return _flip_bits(b, rng)
        top = _as_pairs(header)
        _pick(rng, [_edit_field, _edit_field, _keep_size, _keep_size, _edit_object,
                    _edit_object, _edit_metadata])(top, rng)
        text = to_json(top).encode()
    except (ValueError, RecursionError):  # an earlier edit (or libFuzzer) broke it: edit bytes
        return _flip_bits(b, rng)
    pad = _pick(rng, ["8"] * 6 + ["", " ", "\t", "\n", "\0", "lead"])
    if pad == "8":
        text += b" " * (-len(text) % 8)
    elif pad == "lead":
        text = b" " + text
    else:
        text += pad.encode()
    return len(text).to_bytes(8, "little") + text + b[end:]


def _entries(top):
    return [e for k, e in top if k != "__metadata__" and isinstance(e, Pairs)]


def _edit_field(top, rng):
    """Give one field of one tensor entry a near miss or a wrong value."""
    entries = [e for e in _entries(top) if e]
    if not entries:
        return _edit_object(top, rng)
    entry = _pick(rng, entries)
    i = _int(rng, 0, len(entry))
    key, old = entry[i]
    how = _int(rng, 0, 4)
    if how == 0 or not isinstance(old, (list, str)):
        new = _odd(rng)
    elif key == "dtype" or isinstance(old, str):
        new = _pick(rng, _CODES)
    elif key == "shape":
        new = list(old)
        if how == 1 and new:
            new[_int(rng, 0, len(new))] = _some_int(rng)
        elif how == 2:
            new = [x + _int(rng, -1, 2) if isinstance(x, int) else x for x in new]
        else:
            new = new[:-1] if new and _int(rng, 0, 2) else new + [_some_int(rng)]
    elif len(old) == 2 and all(isinstance(x, int) for x in old):
        a, z = old
        new = _pick(rng, [[a + _int(rng, -8, 9), z + _int(rng, -8, 9)], [z, a], [a], [a, z, z],
                          [a, _some_int(rng)], [_some_int(rng), z], [a, True], [False, z]])
    else:
        new = _odd(rng)
    entry[i] = (key, new)


def _keep_size(top, rng):
    """Edits that keep every byte count right, so many files still read."""
    entries = _entries(top)
    if not entries:
        return _edit_object(top, rng)
    entry = _pick(rng, entries)
    shape, code = _get(entry, "shape"), _get(entry, "dtype")
    how = _int(rng, 0, 4)
    if how == 0 and isinstance(shape, list):
        _set_key(entry, "shape", shape[::-1])
    elif how == 1 and isinstance(shape, list):
        _set_key(entry, "shape", shape + [1] if _int(rng, 0, 2) else [1] + shape)
    elif how == 2:
        _set_key(entry, "dtype", _pick(rng, next((g for g in _SAME_SIZE if code in g), _CODES)))
    else:  # swap two tensors' offsets: still valid when their sizes match
        other = _pick(rng, entries)
        begin_end = _get(entry, "data_offsets")
        _set_key(entry, "data_offsets", _get(other, "data_offsets"))
        _set_key(other, "data_offsets", begin_end)


def _get(obj, key):
    return next((v for k, v in obj if k == key), None)


def _set_key(obj, key, value):
    for i, (k, _) in enumerate(obj):
        if k == key:
            obj[i] = (k, value)
            return
    obj.append((key, value))


def _objects(v):
    """Every JSON object in a tree of Pairs and lists."""
    if isinstance(v, Pairs):
        yield v
        for _, x in v:
            yield from _objects(x)
    elif isinstance(v, list):
        for x in v:
            yield from _objects(x)


def _edit_object(top, rng):
    """Delete, duplicate, add or rename a key of any object (top, entry, metadata)."""
    obj = _pick(rng, list(_objects(top)))
    how = _int(rng, 0, 4)
    if not obj or how == 0:
        key = _pick(rng, ["extra", "", "__metadata__", "dtype", "shape", "data_offsets", "\ud800"])
        obj.append((key, _pick(rng, [_odd(rng), Pairs(obj), "v"]) if obj else _odd(rng)))
    elif how == 1:
        del obj[_int(rng, 0, len(obj))]
    elif how == 2:  # same value or another: both must be rejected
        key, value = _pick(rng, obj)
        obj.insert(_int(rng, 0, len(obj) + 1), (key, value if _int(rng, 0, 2) else _odd(rng)))
    else:
        i = _int(rng, 0, len(obj))
        key, value = obj[i]
        obj[i] = (_pick(rng, [key + "x", _pick(rng, obj)[0], "__metadata__", ""]), value)


def _edit_metadata(top, rng):
    """Edit a metadata value; a JSON value (the config) is edited as JSON, then re-quoted."""
    meta = next((v for k, v in top if k == "__metadata__" and isinstance(v, Pairs) and v), None)
    if meta is None:
        return _edit_object(top, rng)
    i = _int(rng, 0, len(meta))
    key, value = meta[i]
    try:
        inner = _as_pairs(json.loads(value))
    except (TypeError, ValueError):
        inner = None
    if isinstance(inner, Pairs) and inner and _int(rng, 0, 3):
        j = _int(rng, 0, len(inner))
        if _int(rng, 0, 2):
            inner[j] = (inner[j][0], _odd(rng))
        else:
            _edit_object(inner, rng)
        meta[i] = (key, to_json(inner))
    else:
        meta[i] = (key, _pick(rng, [_odd(rng), to_json(_odd(rng)), "NaN", "1e999", "{}", "state"]))


_MUTATIONS = [_flip_bits, _flip_data, _set_bytes, _truncate, _insert, _delete, _set_length,
              _edit_json, _edit_json, _edit_json, _edit_json]


def mutate(data: bytes, rng) -> bytes:
    """1-3 random edits of a safetensors file: bytes, the length field, or the header JSON.

    `rng` needs only `integers(low, high)` (a np.random.Generator or `DrawRng`).
    """
    for _ in range(_pick(rng, [1, 1, 2, 3])):
        data = _pick(rng, _MUTATIONS)(data, rng)
    return data


def test_mutator_takes_any_bytes(base_files):
    # The script hands `mutate` whatever libFuzzer made: it must never raise itself.
    rng = np.random.default_rng(5)
    inputs = [b"", b"\x01", b"\x02" + b"\0" * 7 + b"{}", b"\x10" + b"\0" * 7 + b'{"a":{}}      ',
              b"\x08" + b"\0" * 7 + b"[[[[[[[["]
    inputs += [rng.bytes(int(rng.integers(0, 64))) for _ in range(50)]
    inputs += [b[:int(rng.integers(0, len(b)))] for b in base_files.values() for _ in range(20)]
    for raw in inputs:
        for _ in range(20):
            out = mutate(raw, rng)
            assert isinstance(out, bytes), type(out)


class DrawRng:
    """Answers mutate's `integers` calls with hypothesis draws, so a failure shrinks."""

    def __init__(self, data):
        self.data = data

    def integers(self, low, high):
        return self.data.draw(st.integers(low, high - 1))


def base_checkpoints(d):
    """Valid files to mutate: every dtype, a model with state, a tiny one, one by the package."""
    write_safetensors(d / "mixed", mixed_tensors(9), {"k": "v"})
    save(d / "model", model_params(CLF, 1, np.float32), CLF,
         state={"step": np.array(5, np.int64)}, epoch=1)
    write_safetensors(d / "tiny", {"a": np.arange(3, dtype=np.int16), "b": np.array([True, False])})
    names = ["mixed", "model", "tiny"]
    try:
        from safetensors.numpy import save_file
    except ImportError:
        pass
    else:
        save_file(_le(mixed_tensors(10)), str(d / "package"), metadata={"a": "b"})
        names.append("package")
    return {name: (d / name).read_bytes() for name in names}


def check_file(path, raw: bytes) -> tuple[str, str]:
    """Read (and load) a fuzzed file: (outcome, failed check). Any other exception propagates.

    "rejected": read_safetensors raised CheckpointError naming the file;
    "read": it read, consistently with the header, and `load` raised CheckpointError;
    "loaded": `load` succeeded too, with exactly the config's parameters.
    """
    try:
        tensors, metadata = read_safetensors(path)
    except CheckpointError as e:
        return "rejected", _failed_check(e, path)
    _check_consistent(raw, tensors, metadata)
    try:
        params, cfg, meta = load(path)
    except CheckpointError as e:
        return "read", _failed_check(e, path)
    assert {k: v.shape for k, v in params.items()} == param_shapes(cfg), "load: shapes"
    assert all(v.dtype.kind == "f" for v in params.values()), "load: dtypes"
    assert isinstance(meta["state"], dict), "load: state"
    return "loaded", ""


def _failed_check(e, path) -> str:
    msg = str(e)
    assert msg.startswith(f"{path}: "), f"message does not name the file: {msg[:300]!r}"
    assert "\n" not in msg and len(msg) < len(str(path)) + 600, f"not one short line: {msg[:300]!r}"
    return msg[len(str(path)) + 2:]


def _check_consistent(raw, tensors, metadata):
    """A successful read must describe exactly the bytes that are in the file."""
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    assert metadata == header.pop("__metadata__", {}), "metadata differs from the header"
    assert sorted(header) == sorted(tensors), "names differ from the header"
    for name, arr in tensors.items():
        info = header[name]
        begin, end = info["data_offsets"]
        assert arr.shape == tuple(info["shape"]), name
        assert arr.dtype == np.dtype(DTYPES[info["dtype"]]), name
        assert arr.dtype.isnative and arr.flags.writeable, name
        assert arr.astype(arr.dtype.newbyteorder("<")).tobytes() == raw[8 + n + begin:8 + n + end], name


@pytest.fixture(scope="module")
def base_files(tmp_path_factory):
    return base_checkpoints(tmp_path_factory.mktemp("base"))


FUZZ_CASES = 10_240  # the CI bar is 10,000 mutated checkpoints per run


def test_seeded_mutation_fuzz(tmp_path, base_files):
    # Fixed seeds in every profile: the same 10,240 files each run; the script
    # (scripts/fuzz_checkpoint.py --no-atheris N --seed S) explores other seeds.
    path = tmp_path / "fuzz.safetensors"
    outcomes, checks, slowest = {}, set(), 0.0
    per_base = -(-FUZZ_CASES // len(base_files))
    for seed, name in enumerate(sorted(base_files)):
        rng = np.random.default_rng([20_240, seed])
        for i in range(per_base):
            raw = mutate(base_files[name], rng)
            path.write_bytes(raw)
            start = time.perf_counter()
            try:
                outcome, check = check_file(path, raw)
            except Exception as e:  # keep the input, then pin it as a regression case
                (tmp_path / "crash.safetensors").write_bytes(raw)
                raise AssertionError(f"{name} seed [20240, {seed}] case {i}: {type(e).__name__}: {e}; "
                                     f"input saved to {tmp_path / 'crash.safetensors'}") from e
            slowest = max(slowest, time.perf_counter() - start)
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            # the failed check, with the numbers, names and values in it blanked
            checks.add(re.sub(r"'[^']*'|\"[^\"]*\"|\d+|\[.*?\]", "_", check)[:40])
    total = sum(outcomes.values())
    print(f"\nfuzz: {total} mutated checkpoints, {outcomes}, {len(checks)} distinct checks, "
          f"slowest {slowest * 1e3:.1f} ms")
    assert total >= 10_000, f"only {total} cases ran"
    # A fuzz that only ever fails at the first check proves little: both outcomes,
    # and many different checks, must be reached.
    read_ok = outcomes.get("read", 0) + outcomes.get("loaded", 0)
    assert outcomes.get("rejected", 0) > total // 4 and read_ok > total // 20, outcomes
    assert outcomes.get("loaded", 0) > 0, f"no mutated model file loaded: {outcomes}"
    assert len(checks) >= 40, f"only {len(checks)} distinct checks reached: {sorted(checks)}"
    assert slowest < 2.0, f"one case took {slowest:.2f} s: a hang in the making"


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_files_fail_cleanly(tmp_path, base_files, data):
    raw = mutate(base_files[data.draw(st.sampled_from(sorted(base_files)))], DrawRng(data))
    path = tmp_path / "fuzz.safetensors"
    path.write_bytes(raw)
    check_file(path, raw)
