"""The governor's policy (docs/spec.md §4): device state in, an inference plan out.

    policy(state, previous_mode, seconds_in_mode) -> mode     (pure, with hysteresis)
    plan_for(mode, top_k) -> Plan(mode, precision, top_k, threads)
    Governor(sensors).plan()   samples at most once per tick, thread-safe

Unknown never triggers a constrained mode, so for the policy None is the most benign value of every
numeric field, and for `charging` None acts like False (external power is not confirmed).
"""
from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Callable, NamedTuple

from ..errors import InputError
from .sensors import DeviceState

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
