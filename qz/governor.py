"""The governor: device state in, an inference plan out (docs/spec.md §4).

    sensors  -> DeviceState(battery_pct, charging, temp_c, cpu_util)
    policy(state, previous_mode, seconds_in_mode) -> mode     (pure, with hysteresis)
    plan_for(mode, top_k) -> Plan(mode, precision, top_k, threads)
    Governor(sensors).plan()   samples at most once per tick, thread-safe

Any field of a DeviceState may be None (unknown): containers have no battery
or thermal zones. Readers turn anything missing, unreadable or implausible
into None and never raise. Unknown never triggers a constrained mode, so for
the policy None is the most benign value of every numeric field, and for
`charging` None acts like False (external power is not confirmed).

"charging" here means "on external power": sysfs status Charging, Full and
"Not charging" (plugged in but held at a charge limit) are True, Discharging
is False, Unknown is None.

This module knows nothing of the model; it imports nothing from qz.
"""
from __future__ import annotations

import bisect
import csv
import io
import json
import math
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Callable, Mapping, NamedTuple

from .errors import InputError

__all__ = ["DeviceState", "read_battery", "read_temperature", "read_cpu_times", "busy_share",
           "loadavg_share", "SysfsSensors", "load_trace", "TraceSensors", "override", "parse_charging",
           "MODES", "Thresholds", "raw_mode", "policy", "Plan", "PLANS", "plan_for", "Switch", "Governor"]


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


# ----------------------------------------------------------------------------
# policy: a pure function with hysteresis and a minimum dwell
# ----------------------------------------------------------------------------
MODES = ("performance", "balanced", "low_power", "critical")      # most to least compute
_RANK = {m: i for i, m in enumerate(MODES)}


@dataclass(frozen=True)
class Thresholds:
    """Enter/exit pairs: a mode is entered at the first value and left only past the second."""
    low_battery: float = 20.0
    low_battery_exit: float = 25.0
    critical_battery: float = 5.0
    critical_battery_exit: float = 8.0
    hot_temp: float = 45.0
    hot_exit: float = 40.0
    critical_temp: float = 55.0
    critical_temp_exit: float = 50.0
    busy: float = 0.9
    busy_exit: float = 0.8
    cool_temp: float = 40.0               # performance needs temp < cool_temp (or unknown)
    min_dwell_s: float = 5.0

    def __post_init__(self):
        for name, value in vars(self).items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise InputError(f"{name}: expected a finite number, got {value!r}")
        t = self
        for key, ok, why in [   # each exit sits on the safe side of its entry, and critical beyond low
                ("low_battery", 0 <= t.critical_battery <= t.low_battery <= 100, "critical <= low <= 100"),
                ("critical_battery_exit", t.critical_battery <= t.critical_battery_exit <= 100, ">= entry"),
                ("low_battery_exit", t.low_battery <= t.low_battery_exit <= 100, ">= entry"),
                ("critical_temp", t.hot_temp <= t.critical_temp, ">= hot_temp"),
                ("hot_exit", t.hot_exit <= t.hot_temp, "<= entry"),
                ("critical_temp_exit", t.critical_temp_exit <= t.critical_temp, "<= entry"),
                ("busy_exit", 0 <= t.busy_exit <= t.busy <= 1, "0 <= busy_exit <= busy <= 1"),
                ("cool_temp", t.cool_temp <= t.hot_temp, "<= hot_temp"),
                ("min_dwell_s", t.min_dwell_s >= 0, ">= 0")]:
            if not ok:
                raise InputError(f"{key}: must be {why}, got {getattr(t, key)}")


def _below(x, limit):  # a known value below the limit; unknown never triggers
    return x is not None and x < limit


def _at_least(x, limit):
    return x is not None and x >= limit


def raw_mode(state: DeviceState, th: Thresholds = Thresholds()) -> str:
    """The mode the state alone asks for, without hysteresis.

    As docs/spec.md §4 says literally, battery < critical_battery is critical even while
    charging. A known low battery counts unless charging is known True.
    """
    s = state
    if _below(s.battery_pct, th.critical_battery) or _at_least(s.temp_c, th.critical_temp):
        return "critical"
    if (_below(s.battery_pct, th.low_battery) and s.charging is not True) \
            or _at_least(s.temp_c, th.hot_temp) or _at_least(s.cpu_util, th.busy):
        return "low_power"
    if s.charging is True and not _at_least(s.temp_c, th.cool_temp):
        return "performance"
    return "balanced"


def _cleared(mode: str, s: DeviceState, th: Thresholds) -> bool:
    """Has every trigger of `mode` cleared by its margin? Unknown counts as cleared."""
    if mode == "critical":
        return not _below(s.battery_pct, th.critical_battery_exit) and \
            not (s.temp_c is not None and s.temp_c > th.critical_temp_exit)
    if mode == "low_power":
        return (s.charging is True or not _below(s.battery_pct, th.low_battery_exit)) and \
            not (s.temp_c is not None and s.temp_c > th.hot_exit) and \
            not (s.cpu_util is not None and s.cpu_util > th.busy_exit)
    return True       # balanced has no trigger of its own; performance is never left for more compute


def policy(state: DeviceState, previous_mode: str, seconds_in_mode: float,
           th: Thresholds = Thresholds()) -> str:
    """The next mode. Toward less compute: at once (safety first). Toward more
    compute: only after min_dwell_s in the current mode and once every trigger
    of it has cleared by its margin; then straight to the state's raw mode.

    A worse state (each of battery, temp, cpu no better, charging no more
    confirmed; unknown being the most benign value) never yields more compute:
    raw_mode only grows with worse states and _cleared only shrinks.
    """
    if previous_mode not in _RANK:
        raise InputError(f"previous_mode: expected one of {', '.join(MODES)}, got {previous_mode!r}")
    target = raw_mode(state, th)
    if _RANK[target] >= _RANK[previous_mode]:
        return target
    if seconds_in_mode >= th.min_dwell_s and _cleared(previous_mode, state, th):
        return target
    return previous_mode


# ----------------------------------------------------------------------------
# plans
# ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Plan:
    """What a request runs with. top_k None: the model's config top_k; threads None: all.

    precision "fp32" means fp16 where the bundle has no fp32 (docs/spec.md §4); the runner decides.
    """
    mode: str
    precision: str
    top_k: int | None
    threads: int | None


PLANS = MappingProxyType({
    "performance": Plan("performance", "fp32", None, None),
    "balanced": Plan("balanced", "int8", None, None),
    "low_power": Plan("low_power", "int8", 1, None),
    "critical": Plan("critical", "int8", 1, 1),
})


def plan_for(mode: str, top_k: int, threads: int | None = None) -> Plan:
    """PLANS[mode] filled in for a model whose config top_k is `top_k`, on `threads` threads (None: all)."""
    if mode not in PLANS:
        raise InputError(f"mode: expected one of {', '.join(MODES)}, got {mode!r}")
    p = PLANS[mode]
    return replace(p, top_k=top_k if p.top_k is None else min(p.top_k, top_k),
                   threads=threads if p.threads is None else p.threads)


# ----------------------------------------------------------------------------
# the governor: cached sampling, switches recorded, thread-safe
# ----------------------------------------------------------------------------
class Switch(NamedTuple):
    time: float
    from_mode: str
    to_mode: str
    state: DeviceState


class Governor:
    """`plan()` returns the current Plan; sensors are sampled at most once per tick_s.

    Between ticks plan() is one clock call and one attribute read: the plan is
    immutable and published together with its expiry as one tuple, so a
    request sees either the old plan or the new one, never half a switch. A
    tick runs under a lock. The governor starts in "balanced" and the first
    sample decides at once (no dwell: there is no history yet). The last
    `max_switches` switches are kept.
    """

    def __init__(self, sensors, thresholds: Thresholds = Thresholds(), tick_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic, top_k: int = 2, threads: int | None = None,
                 max_switches: int = 1000):
        if not (isinstance(tick_s, (int, float)) and math.isfinite(tick_s) and tick_s >= 0):
            raise InputError(f"tick_s: expected a finite number >= 0, got {tick_s!r}")
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise InputError(f"top_k: expected an integer >= 1, got {top_k!r}")
        self._sensors, self._th, self._tick_s, self._clock = sensors, thresholds, tick_s, clock
        self._top_k, self._threads = top_k, threads
        self._lock = threading.Lock()
        self._mode, self._since, self._state = "balanced", None, DeviceState()   # _since None: no tick yet
        self._switches: deque[Switch] = deque(maxlen=max_switches)
        self._published = (-math.inf, plan_for("balanced", top_k, threads))   # (next tick, plan)

    def plan(self) -> Plan:
        next_tick, plan = self._published
        if self._clock() < next_tick:
            return plan
        with self._lock:
            now = self._clock()
            if now >= self._published[0]:      # another thread may have ticked while we waited
                self._tick(now)
            return self._published[1]

    def _tick(self, now: float) -> None:
        state = self._sensors.read()
        in_mode = math.inf if self._since is None else now - self._since
        mode = policy(state, self._mode, in_mode, self._th)
        if mode != self._mode:
            self._switches.append(Switch(now, self._mode, mode, state))
        if mode != self._mode or self._since is None:
            self._mode, self._since = mode, now
        self._state = state
        self._published = (now + self._tick_s, plan_for(mode, self._top_k, self._threads))

    @property
    def mode(self) -> str:
        return self._published[1].mode

    @property
    def state(self) -> DeviceState:
        """The last sampled state (all unknown before the first tick)."""
        return self._state

    @property
    def switches(self) -> list[Switch]:
        with self._lock:
            return list(self._switches)
