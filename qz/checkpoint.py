"""Checkpoint files: safetensors written and read with NumPy alone (docs/spec.md §6).

Layout of a safetensors file::

    [8 bytes]  N, the header length, little-endian u64
    [N bytes]  JSON header, UTF-8, padded with spaces to a multiple of 8:
               {"__metadata__": {str: str},            (optional)
                name: {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...}
    [rest]     the data buffer: raw little-endian C-order bytes; offsets are
               relative to its start and tile it exactly

``write_safetensors`` writes the same bytes as ``safetensors.numpy.save_file``
(tensors sorted by dtype enum descending, then name; compact JSON; space
padding), except that ``__metadata__`` keys are sorted here, where the package
uses Rust hash order, which changes from run to run.

``read_safetensors`` trusts nothing (docs/spec.md §6): sizes are checked against the
real file size before anything is allocated; a malformed file raises
``CheckpointError`` ("<path>: <failed check>", one bounded line). It is stricter
than the package: no duplicate keys at any level, no NaN/Infinity/1e999, no
booleans as integers, the header starts with ``{`` and is padded with spaces
only (the format's own rule), the data buffer is tiled exactly, BOOL bytes are
0 or 1. Padding to a multiple of 8 is optional there, so unpadded headers (old
package versions) are read. Writer misuse (non-str name, complex dtype) raises
TypeError/ValueError instead. No pickle: arrays come from raw bytes and a fixed
dtype table.

``save`` / ``load`` (``qz.save`` / ``qz.load``, docs/spec.md §7) add the model layer:
the parameters of docs/spec.md §2.2 (``param_shapes``), config and user metadata as
JSON strings in ``__metadata__``, training state as ``state.<name>`` tensors.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import reprlib
import tempfile

import numpy as np

from .config import Config, param_shapes
from .errors import InputError

__all__ = ["CheckpointError", "write_safetensors", "read_safetensors", "save", "load"]

MAX_HEADER_BYTES = 100_000_000  # the limit the safetensors package enforces
_MAX_NBYTES = 2**63 - 1  # largest array NumPy can describe (intp)
# Python's default int-parsing limit, fixed here so a process that lifted it
# (sys.set_int_max_str_digits(0)) does not parse a 100 MB integer in quadratic time.
_MAX_INT_DIGITS = 4300

# safetensors dtype -> little-endian NumPy dtype. The order is the package's
# Dtype enum order (BF16 and F8 omitted: NumPy has no such types); the writer
# lays tensors out in reverse order of this list, then by name.
_DTYPES = {
    "BOOL": np.dtype("|b1"), "U8": np.dtype("|u1"), "I8": np.dtype("|i1"),
    "I16": np.dtype("<i2"), "U16": np.dtype("<u2"), "F16": np.dtype("<f2"),
    "I32": np.dtype("<i4"), "U32": np.dtype("<u4"), "F32": np.dtype("<f4"),
    "F64": np.dtype("<f8"), "I64": np.dtype("<i8"), "U64": np.dtype("<u8"),
}
_RANK = {code: i for i, code in enumerate(_DTYPES)}
_CODE_OF = {(dt.kind, dt.itemsize): code for code, dt in _DTYPES.items()}
_ENTRY_FIELDS = {"dtype", "shape", "data_offsets"}
_RESERVED_META = ("format", "format_version", "config", "state")
_STATE_PREFIX = "state."


class CheckpointError(InputError):
    """A checkpoint file is missing, malformed or does not fit its config."""


def _bad(path, problem: str) -> CheckpointError:
    return CheckpointError(f"{path}: {problem}")  # one line: the file and the failed check


def _show(x) -> str:
    """A short repr for messages: a hostile header can put 100 MB in one value."""
    return _clip(repr(x) if isinstance(x, str) else reprlib.repr(x), 80)


def _clip(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


# ---------------------------------------------------------------- writing

def write_safetensors(path, tensors: dict[str, np.ndarray],
                      metadata: dict[str, str] | None = None) -> None:
    """Write `tensors` (and an optional str -> str `metadata`) atomically."""
    arrays = {}
    for name, value in tensors.items():
        _check_str("tensor name", name)
        if name == "__metadata__":
            raise InputError("tensor name '__metadata__' is reserved for the metadata map")
        arr = np.asarray(value)
        code = _CODE_OF.get((arr.dtype.kind, arr.dtype.itemsize))
        if code is None:
            raise InputError(f"{name}: unsupported dtype {arr.dtype} "
                             f"(supported: {', '.join(_DTYPES)})")
        # Little-endian, C-contiguous: the on-disk layout, so it can be written as is.
        # (np.ascontiguousarray would turn a 0-d array into shape (1,).)
        arrays[name] = (code, arr.astype(_DTYPES[code], order="C", copy=False))
    if metadata is not None:
        for key, value in metadata.items():
            _check_str("metadata key", key)
            _check_str(f"metadata value of {key!r}", value)

    header: dict = {}
    if metadata is not None:  # an empty map is written, as the package does
        header["__metadata__"] = {k: metadata[k] for k in sorted(metadata)}
    order = sorted(arrays, key=lambda n: (-_RANK[arrays[n][0]], n))
    offset = 0
    for name in order:
        code, arr = arrays[name]
        header[name] = {"dtype": code, "shape": list(arr.shape),
                        "data_offsets": [offset, offset + arr.nbytes]}
        offset += arr.nbytes
    header_bytes = json.dumps(header, separators=(",", ":"), ensure_ascii=False,
                              allow_nan=False).encode("utf-8")
    header_bytes += b" " * (-len(header_bytes) % 8)  # tensor data starts 8-aligned

    def write(f):
        f.write(len(header_bytes).to_bytes(8, "little"))
        f.write(header_bytes)
        for name in order:
            f.write(arrays[name][1].reshape(-1).view(np.uint8))  # no tobytes() copy
    _atomic_write(path, write)


def _check_str(what, value):
    if not isinstance(value, str):
        raise TypeError(f"{what} must be str, got {type(value).__name__}: {value!r}")
    if not _utf8_ok(value):
        raise InputError(f"{what} {value!r} is not valid Unicode")


def _atomic_write(path, write) -> None:
    """Temp file in the same directory, fsync, rename: readers never see a torn file."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    # mkstemp makes the file 0600; keep the mode of the file being replaced, else 0644.
    try:
        mode = os.stat(path).st_mode & 0o7777
    except OSError:
        mode = 0o644
    fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".",
                               suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())  # data on disk before the rename makes it visible
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    # Persist the rename itself; not possible on every platform (Windows).
    with contextlib.suppress(OSError):
        dir_fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def atomic_write_text(path, text: str) -> None:
    """Write a text file (a JSON report) atomically: a kill mid-write leaves the old file or none."""
    _atomic_write(path, lambda f: f.write(text.encode("utf-8")))


# ---------------------------------------------------------------- reading

def _pairs_no_duplicates(pairs):
    obj = {}
    for key, value in pairs:
        if key in obj:  # plain json.loads keeps the last one silently
            raise InputError(f"duplicate key {_show(key)}")
        obj[key] = value
    return obj


def _no_constants(name):
    raise InputError(f"{name} is not valid JSON")


def _finite_float(text):
    x = float(text)
    if not math.isfinite(x):  # 1e999 is valid JSON but parses to inf
        raise InputError(f"number {_show(text)} overflows to infinity")
    return x


def _bounded_int(text):
    if len(text) > _MAX_INT_DIGITS:
        raise InputError(f"integer with {len(text)} digits")
    return int(text)


def _strict_json(text: str):
    """json.loads that rejects duplicate keys, NaN/Infinity and 1e999; errors are ValueErrors."""
    try:
        return json.loads(text, object_pairs_hook=_pairs_no_duplicates,
                          parse_constant=_no_constants, parse_float=_finite_float,
                          parse_int=_bounded_int)
    except RecursionError:  # "[[[[..." a million deep
        raise InputError("JSON nested too deeply") from None


def read_safetensors(path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read a safetensors file: (name -> writable native-endian array, metadata).

    Generic: any dtype of the table above, any names (docs/spec.md §6). Every malformed
    input raises CheckpointError; nothing is allocated from a claimed size
    until that size has been checked against the real file size.
    """
    try:
        with open(path, "rb") as f:
            file_size = os.fstat(f.fileno()).st_size
            if file_size < 8:
                raise _bad(path, f"file is {file_size} bytes, too short for the header length")
            n = int.from_bytes(f.read(8), "little")
            # Check n against the real file size before reading (allocating) n bytes.
            if n == 0:
                raise _bad(path, "header length is 0")
            if n > MAX_HEADER_BYTES:
                raise _bad(path, f"header length {n} is over the {MAX_HEADER_BYTES}-byte limit")
            if 8 + n > file_size:
                raise _bad(path, f"header length {n} runs past the end of the file "
                                 f"({file_size} bytes)")
            raw = f.read(n)
            if len(raw) != n:  # only if the file shrank under us
                raise _bad(path, "file truncated while reading the header")
            entries, metadata = _parse_header(path, raw, file_size - 8 - n)
            tensors = {}
            for name, (dtype, shape, begin, end) in entries:  # in offset order
                arr = np.empty(shape, dtype)  # size checked: the entries tile the real file
                if f.readinto(arr.reshape(-1).view(np.uint8)) != end - begin:
                    raise _bad(path, f"file truncated while reading tensor {_show(name)}")
                if dtype.kind == "b" and arr.view(np.uint8).max(initial=0) > 1:
                    raise _bad(path, f"tensor {_show(name)}: BOOL bytes must be 0 or 1")
                tensors[name] = arr.astype(dtype.newbyteorder("="), copy=False)
    except OSError as e:
        raise _bad(path, f"cannot read file: {e.strerror or e}") from e
    return tensors, metadata


def _parse_header(path, raw: bytes, buffer_len: int):
    """Validate the header; returns ([(name, (dtype, shape, begin, end))] by offset, metadata)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _bad(path, f"header is not valid UTF-8 ({e.reason} at byte {e.start})")
    try:
        header = _strict_json(text)
    except ValueError as e:  # JSONDecodeError, our duplicate/NaN errors, int digit limits
        raise _bad(path, f"header is not valid JSON: {e}")
    if not isinstance(header, dict):
        raise _bad(path, f"header JSON is a {type(header).__name__}, not an object")
    # The format's rule, not json's: "{" first, and only spaces (0x20) as padding.
    if raw[:1] != b"{":
        raise _bad(path, "header does not start with '{'")
    if raw.rstrip(b" ")[-1:] != b"}":
        raise _bad(path, "header padding after the JSON object is not all spaces")

    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict):
        raise _bad(path, "__metadata__ is not a map of str -> str")
    for key, value in metadata.items():
        if not isinstance(value, str):
            raise _bad(path, f"__metadata__ value of {_show(key)} is a "
                             f"{type(value).__name__}, not a str")
        if not (_utf8_ok(key) and _utf8_ok(value)):
            raise _bad(path, f"__metadata__ entry {_show(key)} is not valid Unicode")

    entries = []
    for name, info in header.items():
        where = f"tensor {_show(name)}"
        if not _utf8_ok(name):
            raise _bad(path, f"{where}: name is not valid Unicode")
        if not isinstance(info, dict):
            raise _bad(path, f"{where}: entry is a {type(info).__name__}, not an object")
        if set(info) != _ENTRY_FIELDS:
            missing, extra = _ENTRY_FIELDS - set(info), set(info) - _ENTRY_FIELDS
            raise _bad(path, f"{where}: entry fields wrong "
                             f"(missing {sorted(missing)}, extra {sorted(extra)})")
        code, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if not isinstance(code, str) or code not in _DTYPES:
            raise _bad(path, f"{where}: unknown dtype {_show(code)} "
                             f"(supported: {', '.join(_DTYPES)})")
        dtype = _DTYPES[code]
        if not isinstance(shape, list) or not all(_is_count(s) for s in shape):
            raise _bad(path, f"{where}: shape {_show(shape)} is not a list of "
                             "non-negative integers")
        if len(shape) > 64:  # NumPy's limit on dimensions
            raise _bad(path, f"{where}: shape has {len(shape)} dimensions, more than 64")
        size = dtype.itemsize
        for s in shape:
            size *= s or 1  # NumPy also bounds the product of the non-zero dims
            if size > _MAX_NBYTES:  # stop before the product grows to thousands of digits
                raise _bad(path, f"{where}: shape {_show(shape)} is too large")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_is_count, offsets))):
            raise _bad(path, f"{where}: data_offsets {_show(offsets)} is not two "
                             "non-negative integers")
        begin, end = offsets
        if begin > end:
            raise _bad(path, f"{where}: data_offsets {_show(offsets)} has begin > end")
        nbytes = 0 if 0 in shape else size
        if end - begin != nbytes:
            raise _bad(path, f"{where}: data_offsets span {end - begin} bytes, but shape "
                             f"{_show(shape)} of {code} needs {nbytes}")
        entries.append((name, (dtype, tuple(shape), begin, end)))

    # The data buffer must be tiled exactly: no overlaps, no holes, no slack.
    entries.sort(key=lambda e: (e[1][2], e[1][3]))
    cursor = 0
    for name, (_, _, begin, end) in entries:
        if begin < cursor:
            raise _bad(path, f"tensor {_show(name)}: data_offsets [{begin}, {end}] overlap "
                             "the previous tensor")
        if begin > cursor:
            raise _bad(path, f"tensor {_show(name)}: data_offsets leave a hole at bytes "
                             f"[{cursor}, {begin})")
        cursor = end
    if cursor != buffer_len:
        raise _bad(path, f"data_offsets cover {cursor} bytes but the data buffer "
                         f"is {buffer_len} bytes")
    return entries, metadata


def _is_count(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _utf8_ok(s: str) -> bool:
    # Lone surrogates (a JSON "\ud800" escape decodes to one) have no UTF-8 form.
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# ---------------------------------------------------------------- model files

def save(path, params: dict[str, np.ndarray], cfg: Config, *,
         state: dict[str, np.ndarray] | None = None, **meta) -> None:
    """Save a model: parameters of docs/spec.md §2.2, config, optional state, JSON metadata.

    Every check runs before the file is touched: a bad call leaves any old file intact.
    """
    shapes = param_shapes(cfg)
    missing = [k for k in shapes if k not in params]
    extra = [k for k in params if k not in shapes]
    if missing or extra:
        raise InputError(f"params do not match the config: missing {missing}, extra {extra}")
    for name, shape in shapes.items():
        arr = np.asarray(params[name])
        if arr.shape != shape:
            raise InputError(f"{name}: shape {arr.shape}, config expects {shape}")
        if arr.dtype.kind != "f" or arr.dtype.itemsize not in (2, 4, 8):
            raise InputError(f"{name}: dtype {arr.dtype} is not float16/32/64")
    for key in meta:
        if key in _RESERVED_META:
            raise InputError(f"{key}: reserved metadata key ({', '.join(_RESERVED_META)})")
    metadata = {"format": "qz", "format_version": "1",
                "config": json.dumps(cfg.to_dict(), allow_nan=False)}
    for key, value in meta.items():
        try:
            metadata[key] = json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as e:  # not JSON-able, or NaN/inf
            raise type(e)(f"{key}: cannot store as JSON: {e}") from e

    tensors = dict(params)
    for name, arr in (state or {}).items():
        _check_str("state name", name)
        tensors[_STATE_PREFIX + name] = arr
    write_safetensors(path, tensors, metadata)


def load(path) -> tuple[dict[str, np.ndarray], Config, dict]:
    """Load a model saved by `save`: (params, cfg, meta); meta["state"] holds the state.

    On top of `read_safetensors` (docs/spec.md §6): a qz format tag, a config that
    validates, JSON metadata values, and exactly the parameters of the config,
    float-typed, with the config's shapes. Any failure is a CheckpointError.
    """
    tensors, metadata = read_safetensors(path)
    if metadata.get("format") != "qz":
        raise _bad(path, f"__metadata__ format is {_show(metadata.get('format'))}, "
                         "not 'qz' (not a qz checkpoint)")
    if metadata.get("format_version") != "1":
        raise _bad(path, f"__metadata__ format_version "
                         f"{_show(metadata.get('format_version'))} is not supported")
    if "config" not in metadata:
        raise _bad(path, "__metadata__ has no config")
    try:
        cfg = Config.from_dict(_strict_json(metadata["config"]))
    except (ValueError, TypeError) as e:
        raise _bad(path, f"config: {_clip(str(e))}") from e
    meta = {}
    for key, value in metadata.items():
        if key in ("format", "format_version", "config"):
            continue
        if key == "state":
            raise _bad(path, "__metadata__ key 'state' is reserved")
        try:
            meta[key] = _strict_json(value)
        except ValueError as e:
            raise _bad(path, f"__metadata__ {_show(key)} is not valid JSON: {_clip(str(e))}") from e

    state = {k[len(_STATE_PREFIX):]: v for k, v in tensors.items() if k.startswith(_STATE_PREFIX)}
    params = {k: v for k, v in tensors.items() if not k.startswith(_STATE_PREFIX)}
    # Each block has at least 10 tensors; refuse before param_shapes loops over
    # a hostile n_layers of 10**12.
    if cfg.n_layers * 10 > len(params):
        raise _bad(path, f"config n_layers={cfg.n_layers} needs at least "
                         f"{cfg.n_layers * 10} tensors, the file has {len(params)}")
    shapes = param_shapes(cfg)
    for name, shape in shapes.items():
        if name not in params:
            raise _bad(path, f"tensor {name!r} is missing (config expects shape {shape})")
        arr = params[name]
        if arr.shape != shape:
            raise _bad(path, f"tensor {name!r} has shape {arr.shape}, config expects {shape}")
        if arr.dtype.kind != "f":
            raise _bad(path, f"tensor {name!r} has dtype {arr.dtype}, expected F16, F32 or F64")
    for name in params:
        if name not in shapes:
            raise _bad(path, f"tensor {_show(name)} is not a parameter of this config")
    meta["state"] = state
    return {name: params[name] for name in shapes}, cfg, meta
