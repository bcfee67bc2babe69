"""The governor's sensors (docs/spec.md §4): a DeviceState(battery_pct, charging, temp_c, cpu_util)
read from sysfs and procfs, replayed from a trace, or overridden.

Any field may be None (unknown): containers have no battery or thermal zones. Readers turn anything
missing, unreadable or implausible into None and never raise. "charging" means "on external power":
sysfs status Charging, Full and "Not charging" (plugged in but held at a charge limit) are True,
Discharging is False, Unknown is None.
"""
from __future__ import annotations

import bisect
import csv
import io
import json
import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Callable, Mapping

from ..errors import InputError


# ----------------------------------------------------------------------------
# device state
# ----------------------------------------------------------------------------
@dataclass(frozen=True)
class DeviceState:
    """What the device reports; None = unknown. `sources`: field -> where the value came from."""
    battery_pct: float | None = None      # 0..100
    charging: bool | None = None          # on external power
    temp_c: float | None = None           # hottest plausible thermal zone
    cpu_util: float | None = None         # 0..1, busy share of all CPUs
    sources: Mapping[str, str] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self):
        _check_range("battery_pct", self.battery_pct, 0.0, 100.0)
        _check_range("temp_c", self.temp_c, -273.15, 1000.0)
        _check_range("cpu_util", self.cpu_util, 0.0, 1.0)
        if self.charging is not None and not isinstance(self.charging, bool):
            raise InputError(f"charging: expected true, false or unknown, got {self.charging!r}")
        object.__setattr__(self, "sources", MappingProxyType(dict(self.sources)))


def _check_range(name, value, lo, hi):
    if value is None:
        return
    # `lo <= value <= hi` is False for nan, so it also rejects nan and inf
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise InputError(f"{name}: expected a number in [{lo}, {hi}] or unknown, got {value!r}")


# ----------------------------------------------------------------------------
# Linux readers: sysfs and /proc, under an injectable root
# ----------------------------------------------------------------------------
_STATUS_ON_AC = {"charging": True, "full": True, "not charging": True, "discharging": False}


def _read_text(path: Path) -> str | None:
    # Sysfs files are tiny; the cap guards against a fake tree with a huge file.
    try:
        with open(path, "rb") as f:
            return f.read(4096).decode("utf-8").strip()
    except (OSError, ValueError):         # missing, a directory, no permission, not UTF-8
        return None


def _read_number(path: Path, lo: float, hi: float, scale: float = 1.0) -> float | None:
    text = _read_text(path)
    try:
        value = float(text) / scale if text is not None else math.nan
    except ValueError:                    # "abc", "", "\x00"
        return None
    return value if math.isfinite(value) and lo <= value <= hi else None   # also drops nan, 1e400


def _entries(path: Path) -> list[Path]:
    try:
        return sorted(path.iterdir())
    except OSError:
        return []


def read_battery(root: str = "/") -> tuple[float | None, bool | None, dict[str, str]]:
    """(capacity %, charging, sources) of the first battery, by name, with a readable capacity.

    Only power_supply entries whose `type` is Battery count (not Mains, not USB).
    """
    for entry in _entries(Path(root, "sys/class/power_supply")):
        if _read_text(entry / "type") != "Battery":
            continue
        pct = _read_number(entry / "capacity", 0.0, 100.0)
        if pct is None:
            continue
        status = _read_text(entry / "status")
        charging = _STATUS_ON_AC.get(status.lower()) if status is not None else None
        sources = {"battery_pct": str(entry / "capacity")}
        if charging is not None:
            sources["charging"] = str(entry / "status")
        return pct, charging, sources
    return None, None, {}


def read_temperature(root: str = "/") -> tuple[float | None, str | None]:
    """(hottest plausible zone in C, its path). Zones report millidegrees; -40..150 C is plausible."""
    best, where = None, None
    for zone in _entries(Path(root, "sys/class/thermal")):
        if not zone.name.startswith("thermal_zone"):
            continue
        t = _read_number(zone / "temp", -40.0, 150.0, scale=1000.0)
        if t is not None and (best is None or t > best):
            best, where = t, str(zone / "temp")
    return best, where


def read_cpu_times(root: str = "/") -> tuple[int, int] | None:
    """(idle, total) jiffies from the first line of /proc/stat, or None.

    total is user+nice+system+idle+iowait+irq+softirq+steal; guest time is
    already inside user, so adding it would count it twice. idle includes iowait.
    """
    fields = (_read_text(Path(root, "proc/stat")) or "").split("\n", 1)[0].split()
    try:
        ticks = [int(x) for x in fields[1:9]]
    except ValueError:
        return None
    if fields[:1] != ["cpu"] or len(ticks) < 4 or min(ticks) < 0:
        return None
    return ticks[3] + sum(ticks[4:5]), sum(ticks)


def busy_share(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    """1 - d(idle)/d(total) between two samples; None if either is missing or no time passed."""
    if before is None or after is None:
        return None
    d_idle, d_total = after[0] - before[0], after[1] - before[1]
    if d_total <= 0 or not 0 <= d_idle <= d_total:      # counter reset or no tick elapsed
        return None
    return 1.0 - d_idle / d_total


def loadavg_share() -> float | None:
    """1-minute load average per CPU, clipped to [0, 1]: a rough busy share without a second sample."""
    try:
        load, n = os.getloadavg()[0], os.cpu_count() or 1
    except (OSError, AttributeError):     # unobtainable, or not on this platform
        return None
    share = load / n
    return min(max(share, 0.0), 1.0) if math.isfinite(share) else None


class SysfsSensors:
    """Reads the real device under `root`; `read()` never raises.

    The busy share needs two /proc/stat samples. The constructor takes the
    first and each read() the next, so a read reports the share since the
    previous read (or since construction). Nothing sleeps: when no tick has
    elapsed between samples, `loadavg()` stands in (pass loadavg=None to
    report None instead; tests do). Not thread-safe by itself: the Governor
    calls read() under its lock.
    """

    def __init__(self, root: str = "/", loadavg: Callable[[], float | None] | None = loadavg_share):
        self.root, self._loadavg = root, loadavg
        self._last = read_cpu_times(root)

    def read(self) -> DeviceState:
        pct, charging, sources = read_battery(self.root)
        temp, temp_src = read_temperature(self.root)
        if temp_src is not None:
            sources["temp_c"] = temp_src
        now = read_cpu_times(self.root)
        util, where = busy_share(self._last, now), str(Path(self.root, "proc/stat"))
        self._last = now if now is not None else self._last
        if util is None and self._loadavg is not None:
            util, where = self._loadavg(), "loadavg"
        if util is not None:
            sources["cpu_util"] = where
        return DeviceState(pct, charging, temp, util, sources)


# ----------------------------------------------------------------------------
# replayed traces and explicit overrides
# ----------------------------------------------------------------------------
_TRACE_KEYS = ("time", "battery", "charging", "temp", "cpu_util")


def parse_charging(text: str) -> bool:
    """yes/no, true/false, 1/0 (any case) -> bool; anything else raises ValueError."""
    value = {"yes": True, "true": True, "1": True, "no": False, "false": False, "0": False}.get(
        str(text).strip().lower())
    if value is None:
        raise InputError(f"charging: expected yes/no, true/false or 1/0, got {text!r}")
    return value


def _number(key, v):
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        raise InputError(f"{key}: expected a number, got {v!r}")
    try:
        return float(v)                   # "abc" raises ValueError; nan and inf are caught by DeviceState
    except OverflowError:                 # a JSON integer beyond float
        raise InputError(f"{key}: out of range, got {v!r}") from None


def _trace_row(raw: dict, where: str) -> tuple[float, DeviceState]:
    """One row, {column: value}; "" and null are unknown. Raises ValueError prefixed with `where`."""
    try:
        unknown = sorted(set(raw) - set(_TRACE_KEYS))
        if unknown:
            raise InputError(f"unknown column {unknown[0]!r} (known: {', '.join(_TRACE_KEYS)})")
        v = {k: (None if raw.get(k) in (None, "") else raw[k]) for k in _TRACE_KEYS}
        t = _number("time", v["time"])
        if t is None or not math.isfinite(t):
            raise InputError(f"time: expected a finite number, got {v['time']!r}")
        c = v["charging"]
        charging = c if c is None or isinstance(c, bool) else parse_charging(c)
        state = DeviceState(_number("battery", v["battery"]), charging, _number("temp", v["temp"]),
                            _number("cpu_util", v["cpu_util"]))
    except ValueError as e:
        raise InputError(f"{where}: {e}") from None
    known = [k for k in ("battery_pct", "charging", "temp_c", "cpu_util") if getattr(state, k) is not None]
    return t, replace(state, sources={k: where for k in known})


def load_trace(path) -> list[tuple[float, DeviceState]]:
    """Rows (time_s, DeviceState) sorted by time, from CSV or JSON; a bad file raises ValueError.

    JSON if the text starts with '[' (a list of objects), else CSV with a header.
    Columns: time, battery, charging, temp, cpu_util; all but time may be empty
    (CSV), null or absent (JSON) = unknown. Rows with equal times keep file
    order, so the later one wins at replay. A missing file raises OSError.
    """
    with open(path, "rb") as f:
        data = f.read()
    try:                                  # utf-8-sig: spreadsheets often write a BOM
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InputError(f"{path}: not UTF-8 text") from None
    if text.lstrip().startswith("["):
        try:
            raws = json.loads(text)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}: bad JSON at line {e.lineno}: {e.msg}") from None
        if not all(isinstance(r, dict) for r in raws):
            raise InputError(f"{path}: expected a JSON list of objects")
    else:
        reader = csv.DictReader(io.StringIO(text))
        if reader.fieldnames is None or "time" not in reader.fieldnames:
            raise InputError(f"{path}: expected a CSV header with a 'time' column")
        raws = list(reader)
        if any(None in r for r in raws):
            raise InputError(f"{path}: a CSV row has more cells than the header")
    rows = [_trace_row(r, f"{path}: row {i + 1}") for i, r in enumerate(raws)]
    if not rows:
        raise InputError(f"{path}: the trace has no rows")
    return sorted(rows, key=lambda row: row[0])


class TraceSensors:
    """Replays a trace: read() is the latest row at or before clock(); before the first row, unknown.

    clock gives trace time, e.g. `lambda: time.monotonic() - t0`.
    """

    def __init__(self, rows: list[tuple[float, DeviceState]], clock: Callable[[], float]):
        self._times = [t for t, _ in rows]
        self._states = [s for _, s in rows]
        self._clock = clock
        if self._times != sorted(self._times):
            raise InputError("rows: expected rows sorted by time (load_trace sorts them)")

    def read(self) -> DeviceState:
        i = bisect.bisect_right(self._times, self._clock())
        return self._states[i - 1] if i else DeviceState()


def override(state: DeviceState, battery=None, charging=None, temp=None, cpu_util=None) -> DeviceState:
    """`state` with the given fields replaced (None = keep); their source becomes "override"."""
    given = {"battery_pct": battery, "charging": charging, "temp_c": temp, "cpu_util": cpu_util}
    given = {k: v for k, v in given.items() if v is not None}
    return replace(state, **given, sources={**state.sources, **{k: "override" for k in given}})
