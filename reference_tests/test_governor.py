"""The governor: sensors, traces, overrides, policy, plans (qz/governor/, docs/spec.md §4)."""
import json
import math
import os
import tempfile
import threading
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qz.governor import (MODES, PLANS, DeviceState, Governor, Plan, SysfsSensors, Thresholds,
                         TraceSensors, busy_share, load_trace, loadavg_share, override, parse_charging,
                         plan_for, policy, raw_mode, read_battery, read_cpu_times, read_temperature)

TH = Thresholds()
RANK = {m: i for i, m in enumerate(MODES)}

# values that sit exactly on the default thresholds and their exits, so the edges are drawn often
battery_values = st.one_of(st.floats(0, 100),
                           st.sampled_from([0.0, 4.99, 5.0, 8.0, 19.99, 20.0, 25.0, 100.0]))
temp_values = st.one_of(st.floats(-40, 150), st.sampled_from([39.99, 40.0, 45.0, 50.0, 55.0]))
cpu_values = st.one_of(st.floats(0, 1), st.sampled_from([0.8, 0.9, 1.0]))
states = st.builds(DeviceState, st.none() | battery_values, st.none() | st.booleans(),
                   st.none() | temp_values, st.none() | cpu_values)


@st.composite
def worse_pairs(draw):
    """(A, B) with B no better than A in every field. Unknown is the most benign value of a
    numeric field (it never triggers anything); for charging, True < unknown < False."""
    a = draw(states)

    def worse(x, values, sign, lo, hi):
        if x is None:                 # anything is at least as bad as unknown
            return draw(st.none() | values)
        return min(max(x + sign * draw(st.floats(0, hi - lo)), lo), hi)

    charge_rank = {True: 0, None: 1, False: 2}
    charging = draw(st.sampled_from([c for c in (True, None, False)
                                     if charge_rank[c] >= charge_rank[a.charging]]))
    b = DeviceState(worse(a.battery_pct, battery_values, -1, 0.0, 100.0), charging,
                    worse(a.temp_c, temp_values, +1, -40.0, 150.0),
                    worse(a.cpu_util, cpu_values, +1, 0.0, 1.0))
    return a, b


# ----------------------------------------------------------------------------
# policy
# ----------------------------------------------------------------------------
@given(worse_pairs(), st.sampled_from(MODES), st.one_of(st.floats(0, 20), st.just(TH.min_dwell_s)))
def test_worse_state_never_gets_more_compute(pair, previous, seconds):
    a, b = pair
    mode_a, mode_b = policy(a, previous, seconds), policy(b, previous, seconds)
    assert RANK[mode_b] >= RANK[mode_a], (a, b, previous, seconds, mode_a, mode_b)
    assert RANK[raw_mode(b)] >= RANK[raw_mode(a)]


@pytest.mark.parametrize("state,mode", [
    (DeviceState(), "balanced"),                                            # all unknown
    (DeviceState(battery_pct=50.0, charging=False, temp_c=30.0, cpu_util=0.5), "balanced"),
    (DeviceState(charging=True), "performance"),                            # unknown temp counts as cool
    (DeviceState(charging=True, temp_c=39.9), "performance"),
    (DeviceState(charging=True, temp_c=40.0), "balanced"),                  # cool means temp < 40
    (DeviceState(battery_pct=19.9, charging=False), "low_power"),
    (DeviceState(battery_pct=19.9), "low_power"),                           # external power not confirmed
    (DeviceState(battery_pct=19.9, charging=True), "performance"),
    (DeviceState(battery_pct=20.0, charging=False), "balanced"),
    (DeviceState(temp_c=45.0), "low_power"),
    (DeviceState(cpu_util=0.9), "low_power"),
    (DeviceState(cpu_util=0.89, charging=True), "performance"),
    (DeviceState(battery_pct=4.9, charging=True), "critical"),               # the spec literally: even on AC
    (DeviceState(battery_pct=5.0), "low_power"),
    (DeviceState(temp_c=55.0, charging=True), "critical"),
])
def test_raw_mode_follows_the_spec_table(state, mode):
    assert raw_mode(state) == mode
    assert policy(state, "balanced", math.inf) == mode


@pytest.mark.parametrize("state,previous,seconds,mode", [
    (DeviceState(battery_pct=22.0, charging=False), "low_power", 60.0, "low_power"),   # not past the margin
    (DeviceState(battery_pct=25.0, charging=False), "low_power", 60.0, "balanced"),
    (DeviceState(battery_pct=25.0, charging=False), "low_power", 4.9, "low_power"),    # dwell not over
    (DeviceState(battery_pct=10.0, charging=True), "low_power", 5.0, "performance"),   # charging clears
    (DeviceState(temp_c=40.5), "low_power", 60.0, "low_power"),
    (DeviceState(temp_c=40.0), "low_power", 60.0, "balanced"),
    (DeviceState(cpu_util=0.85), "low_power", 60.0, "low_power"),
    (DeviceState(battery_pct=7.0, charging=True), "critical", 60.0, "critical"),
    (DeviceState(battery_pct=8.0, charging=True), "critical", 60.0, "performance"),
    (DeviceState(temp_c=50.5), "critical", 60.0, "critical"),
    (DeviceState(temp_c=50.0), "critical", 60.0, "low_power"),                       # raw target of the state
    (DeviceState(charging=False), "performance", 0.0, "balanced"),                     # less compute: at once
    (DeviceState(temp_c=60.0), "performance", 0.0, "critical"),
    (DeviceState(charging=True), "balanced", 4.0, "balanced"),
    (DeviceState(charging=True), "balanced", 5.0, "performance"),
])
def test_hysteresis_and_dwell(state, previous, seconds, mode):
    assert policy(state, previous, seconds) == mode


def test_policy_rejects_unknown_mode():
    with pytest.raises(ValueError, match="previous_mode"):
        policy(DeviceState(), "turbo", 0.0)


@pytest.mark.parametrize("change,key", [
    (dict(low_battery_exit=19.0), "low_battery_exit"),
    (dict(critical_battery_exit=4.0), "critical_battery_exit"),
    (dict(hot_exit=46.0), "hot_exit"),
    (dict(critical_temp_exit=56.0), "critical_temp_exit"),
    (dict(busy_exit=0.95), "busy_exit"),
    (dict(critical_battery=30.0), "low_battery"),
    (dict(critical_temp=44.0), "critical_temp"),
    (dict(cool_temp=50.0), "cool_temp"),
    (dict(min_dwell_s=-1.0), "min_dwell_s"),
    (dict(busy=math.nan), "busy"),
])
def test_thresholds_are_validated(change, key):
    with pytest.raises(ValueError, match=key):
        Thresholds(**change)


def test_battery_jitter_around_a_threshold_does_not_flap():
    # battery jittering 18..22 % every 0.1 s for 60 s, unplugged: the low_power exit (25 %) is never reached
    clock = FakeClock()
    values = [18.0, 22.0, 19.5, 21.0, 20.0, 19.99]
    sensors = CallbackSensors(lambda n: DeviceState(battery_pct=values[n % len(values)], charging=False))
    gov = Governor(sensors, tick_s=0.1, clock=clock)
    for _ in range(600):
        gov.plan()
        clock.t += 0.1
    assert len(gov.switches) <= 60.0 / TH.min_dwell_s + 1
    assert gov.mode == "low_power"


@given(st.lists(states, min_size=1, max_size=300), st.floats(0.05, 2.0))
def test_noisy_sensors_cannot_make_it_flap(sequence, step):
    # Every switch toward more compute comes at least min_dwell_s after the switch before it.
    clock = FakeClock()
    gov = Governor(CallbackSensors(lambda n: sequence[n % len(sequence)]), tick_s=0.0, clock=clock)
    for _ in range(len(sequence)):
        gov.plan()
        clock.t += step
    switches = gov.switches
    for before, sw in zip(switches, switches[1:]):
        assert before.to_mode == sw.from_mode
        if RANK[sw.to_mode] < RANK[sw.from_mode]:
            assert sw.time - before.time >= TH.min_dwell_s - 1e-9, (before, sw)
    relaxing = sum(RANK[s.to_mode] < RANK[s.from_mode] for s in switches)
    duration = len(sequence) * step
    assert relaxing <= duration / TH.min_dwell_s + 1


# ----------------------------------------------------------------------------
# plans
# ----------------------------------------------------------------------------
def test_plans_follow_the_spec_table():
    assert plan_for("performance", 2) == Plan("performance", "fp32", 2, None)
    assert plan_for("balanced", 2) == Plan("balanced", "int8", 2, None)
    assert plan_for("low_power", 2, threads=4) == Plan("low_power", "int8", 1, 4)
    assert plan_for("critical", 2, threads=4) == Plan("critical", "int8", 1, 1)
    assert set(PLANS) == set(MODES)
    with pytest.raises(ValueError, match="mode"):
        plan_for("turbo", 2)


# ----------------------------------------------------------------------------
# Governor
# ----------------------------------------------------------------------------
class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


class CallbackSensors:
    """read() returns make(n) for the n-th read, and counts reads."""

    def __init__(self, make):
        self.make, self.reads = make, 0

    def read(self):
        state = self.make(self.reads)
        self.reads += 1
        return state


def test_governor_samples_once_per_tick():
    clock = FakeClock()
    sensors = CallbackSensors(lambda n: DeviceState(charging=True, temp_c=30.0))
    gov = Governor(sensors, tick_s=1.0, clock=clock, top_k=3)
    assert gov.plan() == Plan("performance", "fp32", 3, None)   # the first sample decides at once
    for t in (0.0, 0.5, 0.999):
        clock.t = t
        gov.plan()
    assert sensors.reads == 1
    clock.t = 1.0
    gov.plan()
    assert sensors.reads == 2
    assert [(s.from_mode, s.to_mode) for s in gov.switches] == [("balanced", "performance")]
    assert gov.state == DeviceState(charging=True, temp_c=30.0)


def test_governor_switches_down_at_once_and_up_after_the_dwell():
    clock = FakeClock()
    state = {"now": DeviceState(battery_pct=50.0, charging=False)}
    gov = Governor(CallbackSensors(lambda n: state["now"]), tick_s=1.0, clock=clock)
    assert gov.plan().mode == "balanced"
    clock.t, state["now"] = 2.0, DeviceState(battery_pct=3.0, charging=False)
    assert gov.plan().mode == "critical"
    clock.t, state["now"] = 3.0, DeviceState(battery_pct=90.0, charging=False)
    assert gov.plan().mode == "critical"                # in critical for 1 s < min_dwell_s
    clock.t = 7.0
    assert gov.plan().mode == "balanced"
    assert [(s.time, s.to_mode) for s in gov.switches] == [(2.0, "critical"), (7.0, "balanced")]


def test_governor_is_thread_safe():
    # The state flips on every read; plans seen by requests must always be whole plans.
    flip = [DeviceState(charging=True, temp_c=20.0), DeviceState(battery_pct=2.0, temp_c=60.0)]
    sensors = CallbackSensors(lambda n: flip[n % 2])      # not thread-safe: the governor serializes reads
    gov = Governor(sensors, thresholds=Thresholds(min_dwell_s=0.0), tick_s=0.0, top_k=2)
    valid = {plan_for(m, 2) for m in MODES}
    seen, errors = [], []

    def worker():
        try:
            for _ in range(300):
                seen.append(gov.plan())
        except Exception as e:      # noqa: BLE001 - reported below, in the main thread
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert set(seen) <= valid and len(seen) == 1200
    switches = gov.switches
    assert len(switches) >= 2 and len(switches) <= sensors.reads
    for a, b in zip(switches, switches[1:]):
        assert a.to_mode == b.from_mode and a.time <= b.time


def test_governor_validates_arguments():
    with pytest.raises(ValueError, match="tick_s"):
        Governor(CallbackSensors(lambda n: DeviceState()), tick_s=-1.0)
    with pytest.raises(ValueError, match="top_k"):
        Governor(CallbackSensors(lambda n: DeviceState()), top_k=0)


# ----------------------------------------------------------------------------
# DeviceState, overrides
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("kw", [dict(battery_pct=101.0), dict(battery_pct=-1.0), dict(cpu_util=1.5),
                                dict(temp_c=math.nan), dict(temp_c=math.inf), dict(temp_c=10**400),
                                dict(cpu_util=math.nan), dict(charging="yes"), dict(battery_pct=True)])
def test_device_state_is_validated(kw):
    with pytest.raises(ValueError, match=next(iter(kw))):
        DeviceState(**kw)


def test_sources_are_immutable_and_not_compared():
    a = DeviceState(battery_pct=50.0, sources={"battery_pct": "here"})
    assert a == DeviceState(battery_pct=50.0) and hash(a) == hash(DeviceState(battery_pct=50.0))
    with pytest.raises(TypeError):
        a.sources["battery_pct"] = "elsewhere"


def test_override_replaces_only_given_fields():
    s = DeviceState(battery_pct=50.0, charging=False, temp_c=30.0, sources={"temp_c": "zone0"})
    o = override(s, battery=10.0, cpu_util=0.5)
    assert o == DeviceState(battery_pct=10.0, charging=False, temp_c=30.0, cpu_util=0.5)
    assert dict(o.sources) == {"temp_c": "zone0", "battery_pct": "override", "cpu_util": "override"}
    assert override(s, charging=True).charging is True
    with pytest.raises(ValueError, match="battery_pct"):
        override(s, battery=200.0)


@pytest.mark.parametrize("text,value", [("yes", True), ("No", False), ("TRUE", True), ("false", False),
                                        ("1", True), (" 0 ", False)])
def test_parse_charging(text, value):
    assert parse_charging(text) is value


@pytest.mark.parametrize("text", ["", "maybe", "2", "on?", "yess"])
def test_parse_charging_rejects_garbage(text):
    with pytest.raises(ValueError, match="charging"):
        parse_charging(text)


# ----------------------------------------------------------------------------
# Linux readers on fake trees
# ----------------------------------------------------------------------------
def write(root: Path, rel: str, content):
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


STAT = "cpu  {busy} 0 0 {idle} {iowait} 0 0 0 0 0\ncpu0 1 2 3 4 5 6 7 8 9 10\nintr 12345\n"


def good_tree(root: Path):
    write(root, "sys/class/power_supply/AC/type", "Mains\n")
    write(root, "sys/class/power_supply/AC/online", "1\n")
    write(root, "sys/class/power_supply/BAT0/type", "Battery\n")
    write(root, "sys/class/power_supply/BAT0/capacity", "57\n")
    write(root, "sys/class/power_supply/BAT0/status", "Discharging\n")
    write(root, "sys/class/thermal/thermal_zone0/temp", "42000\n")
    write(root, "sys/class/thermal/thermal_zone1/temp", "38500\n")
    write(root, "sys/class/thermal/thermal_zone2/temp", "200000\n")     # implausible: skipped
    write(root, "sys/class/thermal/cooling_device0/temp", "90000\n")    # not a thermal zone
    write(root, "proc/stat", STAT.format(busy=100, idle=800, iowait=100))


def test_sysfs_reads_a_good_tree(tmp_path):
    good_tree(tmp_path)
    sensors = SysfsSensors(str(tmp_path), loadavg=None)
    write(tmp_path, "proc/stat", STAT.format(busy=160, idle=830, iowait=110))   # +60 busy, +40 idle
    s = sensors.read()
    assert s == DeviceState(battery_pct=57.0, charging=False, temp_c=42.0, cpu_util=0.6)
    assert s.sources["battery_pct"].endswith("BAT0/capacity")
    assert s.sources["temp_c"].endswith("thermal_zone0/temp")
    assert s.sources["cpu_util"].endswith("proc/stat")
    # no tick between reads: unknown without the loadavg fallback, the fallback's value with it
    assert sensors.read().cpu_util is None
    s = SysfsSensors(str(tmp_path), loadavg=lambda: 0.25).read()
    assert s.cpu_util == 0.25 and s.sources["cpu_util"] == "loadavg"


@pytest.mark.parametrize("status,charging", [("Charging", True), ("Full", True), ("Not charging", True),
                                             ("Discharging", False), ("Unknown", None), ("weird", None)])
def test_battery_status(tmp_path, status, charging):
    good_tree(tmp_path)
    write(tmp_path, "sys/class/power_supply/BAT0/status", status + "\n")
    assert read_battery(str(tmp_path))[:2] == (57.0, charging)


def test_empty_root_reads_unknown(tmp_path):
    s = SysfsSensors(str(tmp_path), loadavg=None).read()
    assert s == DeviceState() and dict(s.sources) == {}


GARBAGE = st.one_of(st.binary(max_size=40), st.sampled_from([
    b"", b"abc", b"nan", b"-5", b"1e400", b"inf", b"99999999999999999999999999", b"\xff\xfe\x00",
    b"101", b"-41000", b"151000", b"cpu 1 2 3", b"cpu a b c d e", b"cpu -1 -2 -3 -4 -5", "٣".encode()]))
KINDS = st.one_of(GARBAGE, st.sampled_from(["dir", "missing"]))


def plant(root: Path, rel: str, kind):
    if kind == "missing":
        return
    if kind == "dir":
        (root / rel).mkdir(parents=True)
    else:
        write(root, rel, kind)


@given(st.one_of(KINDS, st.just(b"Battery\n")), st.one_of(KINDS, st.just(b"57\n")), KINDS, KINDS, KINDS,
       GARBAGE)
def test_garbage_reads_as_unknown_and_never_raises(type_, capacity, status, temp, stat1, stat2):
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        plant(root, "sys/class/power_supply/BAT0/type", type_)
        plant(root, "sys/class/power_supply/BAT0/capacity", capacity)
        plant(root, "sys/class/power_supply/BAT0/status", status)
        plant(root, "sys/class/thermal/thermal_zone0/temp", temp)
        plant(root, "proc/stat", stat1)
        sensors = SysfsSensors(d, loadavg=None)
        if (root / "proc/stat").is_file():      # the second sample, for the busy share
            plant(root, "proc/stat", stat2)
        s = sensors.read()                       # DeviceState validates every field it is given
        pct, _, _ = read_battery(d)
        is_battery = isinstance(type_, bytes) and type_.decode("utf-8", "replace").strip() == "Battery"
        assert pct is None or (0 <= pct <= 100 and is_battery)
        if is_battery and _plain_int(capacity, 0, 100):
            assert pct == int(capacity)
        assert s.temp_c is None or -40 <= s.temp_c <= 150
        if _plain_int(temp, -40_000, 150_000):
            assert s.temp_c == int(temp) / 1000


def _plain_int(content, lo, hi):
    """Is this file content an ASCII integer in [lo, hi] (the only thing that should read as a value)?"""
    return isinstance(content, bytes) and content.strip().lstrip(b"-").isdigit() and \
        content.strip().isascii() and lo <= int(content) <= hi


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_files_read_as_unknown(tmp_path):
    good_tree(tmp_path)
    paths = [tmp_path / rel for rel in ("sys/class/power_supply/BAT0/capacity", "proc/stat",
                                        "sys/class/thermal/thermal_zone0/temp",
                                        "sys/class/thermal/thermal_zone1/temp")]
    for p in paths:
        p.chmod(0)
    try:
        assert SysfsSensors(str(tmp_path), loadavg=None).read() == DeviceState()
    finally:
        for p in paths:
            p.chmod(0o644)


def test_cpu_times_and_busy_share(tmp_path):
    write(tmp_path, "proc/stat", STAT.format(busy=10, idle=70, iowait=20))
    assert read_cpu_times(str(tmp_path)) == (90, 100)
    assert busy_share((90, 100), (120, 200)) == pytest.approx(0.7)
    assert busy_share((90, 100), (90, 100)) is None          # no tick elapsed
    assert busy_share((90, 100), (10, 50)) is None            # counters went back
    assert busy_share(None, (90, 100)) is None
    assert read_temperature(str(tmp_path)) == (None, None)


def test_the_real_machine_never_raises():
    sensors = SysfsSensors()
    s = sensors.read()
    assert isinstance(s, DeviceState) and isinstance(sensors.read(), DeviceState)
    share = loadavg_share()
    assert share is None or 0.0 <= share <= 1.0


# ----------------------------------------------------------------------------
# traces
# ----------------------------------------------------------------------------
def test_csv_trace(tmp_path):
    p = write(tmp_path, "t.csv", "time,battery,charging,temp,cpu_util\n"
                                 "2.5,40,no,,0.5\n0,90,yes,35,\n1,,,,\n")
    rows = load_trace(p)
    assert [t for t, _ in rows] == [0.0, 1.0, 2.5]
    assert rows[0][1] == DeviceState(90.0, True, 35.0, None)
    assert rows[1][1] == DeviceState()
    assert rows[2][1] == DeviceState(40.0, False, None, 0.5)
    assert rows[2][1].sources["battery_pct"] == f"{p}: row 1"
    sensors_clock = FakeClock()
    replay = TraceSensors(rows, sensors_clock)
    for t, expected in [(-1.0, DeviceState()), (0.0, rows[0][1]), (0.9, rows[0][1]), (1.0, rows[1][1]),
                        (99.0, rows[2][1])]:
        sensors_clock.t = t
        assert replay.read() == expected, t


def test_json_trace(tmp_path):
    data = [{"time": 1, "battery": 3, "charging": False, "temp": 60.5},
            {"time": 0, "battery": None, "charging": "yes", "cpu_util": 0.95}]
    rows = load_trace(write(tmp_path, "t.json", json.dumps(data)))
    assert rows == [(0.0, DeviceState(None, True, None, 0.95)), (1.0, DeviceState(3.0, False, 60.5, None))]


@pytest.mark.parametrize("name,text,where", [
    ("a.csv", "time,battery\n0,abc\n", "row 1"),
    ("b.csv", "time,battery\n0,50\n1,150\n", "row 2"),
    ("c.csv", "time,batery\n0,50\n", "row 1"),                     # a typo in a column name
    ("d.csv", "time,charging\n0,maybe\n", "row 1"),
    ("e.csv", "time,temp\n,30\n", "row 1"),
    ("f.csv", "time,temp\nnan,30\n", "row 1"),
    ("g.csv", "time,temp\n0,30,5\n", "more cells"),
    ("h.csv", "battery,temp\n50,30\n", "time"),
    ("i.csv", "time,battery\n", "no rows"),
    ("j.csv", b"time,battery\n0,\xff\n", "UTF-8"),
    ("k.json", "[{\"time\": 0,}]", "JSON"),
    ("l.json", "[1, 2]", "objects"),
    ("m.json", "[{\"time\": 0, \"battery\": [1]}]", "row 1"),
    ("n.json", "[{\"time\": 0, \"cpu_util\": 2}]", "row 1"),
    ("p.json", "[{\"time\": 0, \"temp\": 1%s}]" % ("0" * 400), "row 1"),     # beyond float
    ("o.json", "[]", "no rows"),
])
def test_bad_traces_raise_one_line_value_errors(tmp_path, name, text, where):
    p = write(tmp_path, name, text)
    with pytest.raises(ValueError, match=where) as info:
        load_trace(p)
    message = str(info.value)
    assert message.startswith(str(p)) and "\n" not in message


def test_trace_sensors_need_sorted_rows():
    with pytest.raises(ValueError, match="sorted"):
        TraceSensors([(1.0, DeviceState()), (0.0, DeviceState())], FakeClock())
