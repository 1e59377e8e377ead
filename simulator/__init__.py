"""pregate.simulator: replay MoE routing traces against hardware profiles and policies.

Entry points: :func:`simulate` (timed SimPy run with bounds), :func:`replay`
(counts only, fast), :class:`Settings` (what to simulate), :func:`load_profile`
(hardware). Policies live in :mod:`pregate.simulator.policies`.
"""

from pregate.simulator.api import Result, Simulation, replay, simulate
from pregate.simulator.profile import HardwareProfile, detect_profile, load_profile, profile_for_device
from pregate.simulator.settings import Settings, parse_cache_size

__all__ = [
    "HardwareProfile",
    "Result",
    "Settings",
    "Simulation",
    "detect_profile",
    "load_profile",
    "parse_cache_size",
    "profile_for_device",
    "replay",
    "simulate",
]
