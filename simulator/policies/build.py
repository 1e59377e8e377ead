"""Constructing a speculation policy from the settings, for the simulator and the executor alike."""

from __future__ import annotations


def make_speculation(spec_cls, layout, settings, source=None):
    """A speculation policy for ``settings``.

    A policy that needs more than the layout and the seed (a trained model,
    the trace to train it on) defines ``from_settings(layout, settings,
    source)``; ``source`` is the trace being simulated, or None (the live
    executor). Every other policy gets its plain constructor.
    """
    build = getattr(spec_cls, "from_settings", None)
    return build(layout, settings, source) if build else spec_cls(layout=layout, seed=settings.seed)
