"""The governor (docs/spec.md §4): what the device is doing, and what the model may spend.

    sensors.py   DeviceState from sysfs and procfs, a replayed trace, or overrides
    policy.py    policy(state, previous_mode, seconds_in_mode) -> mode, plan_for(mode) -> Plan, Governor
    energy.py    multiply-accumulates and weight bytes of an inference, energy from published
                 per-operation figures, RAPL where the machine has it
    simulate.py  a battery discharge replayed under three policies

sensors and policy know nothing of the model: they import nothing from qz but qz.errors.
"""
from .policy import (
    MODES,
    PLANS,
    Governor,
    Plan,
    Switch,
    Thresholds,
    plan_for,
    policy,
    raw_mode,
)
from .sensors import (
    DeviceState,
    SysfsSensors,
    TraceSensors,
    busy_share,
    load_trace,
    loadavg_share,
    override,
    parse_charging,
    read_battery,
    read_cpu_times,
    read_temperature,
)

__all__ = ["DeviceState", "read_battery", "read_temperature", "read_cpu_times", "busy_share",
           "loadavg_share", "SysfsSensors", "load_trace", "TraceSensors", "override", "parse_charging",
           "MODES", "Thresholds", "raw_mode", "policy", "Plan", "PLANS", "plan_for", "Switch", "Governor"]
