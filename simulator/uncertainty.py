"""How sure an answer is: the same point priced across the ranges of its profiles' values.

Why corners by direction rather than every combination: a profile pair has
twenty or more uncertain values, and 2^20 runs per point is out of reach. But
every value the cost model reads moves time in a known direction (a cost in
seconds or a kernel count makes a step slower when it grows; a rate in B/s,
FLOP/s or a share of HBM makes it faster), so the fastest and slowest step the
ranges allow are the two joint corners: every value at its fast end, every
value at its slow end. Two runs bound the answer. ``--uncertainty N`` instead
draws N seeded joint samples, uniform in each range, for a band that is not a
worst case.

When a comparison (the winner against the runner-up) does not hold across the
band, :func:`deciding_value` finds which value decides it: it moves one value
at a time to either end of its range and reports the one whose range alone
flips the order (or, if none does alone, the one that moves the gap most).
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from pregate.simulator.errors import SimulatorError
from pregate.simulator.profile import HardwareProfile
from pregate.simulator.runtime import RuntimeProfile

SLOWER_WHEN_HIGHER = ("s", "count")  # units of costs; the others (B/s, FLOP/s, ratio) are rates
NOT_VARIED = ("gpu.memory", "pcie.copy_engines")  # what fits, and a whole number of engines: not a timing


@dataclasses.dataclass(frozen=True)
class Scenario:
    """One pricing of a point: a label and the values changed from the profiles' nominal ones."""

    label: str
    profile: dict[str, float]
    runtime: dict[str, float]


def parse_mode(text: str | int) -> str:
    """``corners`` or a sample count; anything else is refused in one line."""
    text = str(text).strip()
    if text in ("", "corners") or re.fullmatch(r"[1-9][0-9]*", text):
        return text
    raise SimulatorError(f"--uncertainty '{text}' is not 'corners' or a number of samples (e.g. 16)")


def varied(profile: HardwareProfile, runtime: RuntimeProfile) -> list[tuple[str, str, object]]:
    """The values with a range: (which profile, key, value)."""
    out = [("profile", k, v) for k, v in sorted(profile.entries.items()) if v.uncertain and k not in NOT_VARIED]
    out += [("runtime", k, v) for k, v in sorted(runtime.entries.items()) if v.uncertain]
    return out


def _end(value, fast: bool) -> float:
    slow_high = value.unit in SLOWER_WHEN_HIGHER
    return (value.low if slow_high else value.high) if fast else (value.high if slow_high else value.low)


def scenarios(profile: HardwareProfile, runtime: RuntimeProfile, mode: str, seed: int = 0) -> list[Scenario]:
    """The pricings that make the band: the two joint corners, or N seeded joint samples."""
    values = varied(profile, runtime)
    if mode == "corners":
        out = []
        for label, fast in (("fast", True), ("slow", False)):
            changes = {"profile": {}, "runtime": {}}
            for where, key, v in values:
                changes[where][key] = _end(v, fast)
            out.append(Scenario(label, changes["profile"], changes["runtime"]))
        return out
    rng = np.random.default_rng(seed)
    out = []
    for i in range(int(mode)):
        changes = {"profile": {}, "runtime": {}}
        for where, key, v in values:
            changes[where][key] = float(rng.uniform(v.low, v.high))
        out.append(Scenario(f"sample {i}", changes["profile"], changes["runtime"]))
    return out


def priced(sim, scenario: Scenario):
    """A Simulation of the same stream and settings with the scenario's values."""
    from pregate.simulator.api import Simulation

    profile = sim.profile.replace(**scenario.profile) if scenario.profile else sim.profile
    runtime = sim.runtime.replace(**scenario.runtime) if scenario.runtime else sim.runtime
    return Simulation(None, sim.settings, profile=profile, stream=sim.stream, runtime=runtime)


def _measure(sim, settings) -> tuple[float, float]:
    outcome, _ = sim.timed(settings)
    steps = [s for s in outcome.steps if s.decode] or outcome.steps
    lat = float(np.mean([s.latency_s for s in steps]))
    tokens = sum(s.tokens for s in steps)
    total = sum(s.latency_s for s in steps)
    return lat, (tokens / total if total > 0 else 0.0)


def band(sim, settings, mode: str, seed: int = 0, memo: dict | None = None) -> dict:
    """Low-high of mean step latency and tokens/s across the scenarios, with each scenario's values."""
    rows = []
    for sc in scenarios(sim.profile, sim.runtime, mode, seed):
        key = (sc.label, tuple(sorted(sc.profile.items())), tuple(sorted(sc.runtime.items())))
        if memo is not None and key in memo:
            other = memo[key]
        else:
            other = priced(sim, sc)
            if memo is not None:
                memo[key] = other
        rows.append((sc.label, *_measure(other, settings)))
    lat = [r[1] for r in rows]
    tps = [r[2] for r in rows]
    n_values = len(varied(sim.profile, sim.runtime))
    return {
        "uncertainty": mode,
        "uncertainty_values": n_values,
        "mean_step_latency_s_low": float(min(lat)),
        "mean_step_latency_s_high": float(max(lat)),
        "tokens_per_s_low": float(min(tps)),
        "tokens_per_s_high": float(max(tps)),
        "uncertainty_tokens_per_s": [float(t) for t in tps],  # per scenario, in order: paired comparisons
    }


def holds(winner: dict, other: dict) -> bool:
    """Whether ``winner`` is at least as fast as ``other`` in every scenario (paired, same values)."""
    a, b = winner["uncertainty_tokens_per_s"], other["uncertainty_tokens_per_s"]
    return all(x >= y for x, y in zip(a, b))


def deciding_value(sim, winner_settings, other_settings, progress: bool = False) -> dict:
    """The value whose range decides the order of two settings (one value moved at a time).

    Four timed runs per ranged value (each end, both settings): minutes on a
    large trace, so ``progress`` shows a bar over the values.

    Returns ``{"key", "where", "flips_at", "gap_range"}``: the value that flips
    the order at one end of its range (``flips_at``: "low" or "high"), else the
    one that moves the gap in tokens/s the most (``flips_at`` None).
    """
    base_w = _measure(sim, winner_settings)[1]
    base_o = _measure(sim, other_settings)[1]
    from tqdm.auto import tqdm

    best = None
    for where, key, v in tqdm(varied(sim.profile, sim.runtime), desc="deciding value", unit="value",
                              disable=not progress, dynamic_ncols=True):
        gaps = {}
        for end, x in (("low", v.low), ("high", v.high)):
            sc = Scenario(end, {key: x} if where == "profile" else {}, {key: x} if where == "runtime" else {})
            alt = priced(sim, sc)
            gaps[end] = _measure(alt, winner_settings)[1] - _measure(alt, other_settings)[1]
        flips = [end for end, g in gaps.items() if g < 0]
        swing = abs(gaps["high"] - gaps["low"])
        score = (1 if flips else 0, swing)
        if best is None or score > best[0]:
            best = (score, {"where": where, "key": key, "flips_at": flips[0] if flips else None,
                            "low": v.low, "high": v.high, "gap_tokens_per_s": {"nominal": base_w - base_o, **gaps}})
    return best[1] if best else {}
