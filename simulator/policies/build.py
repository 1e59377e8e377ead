"""Constructing policies from the settings, for the simulator and the executor alike.

One place turns ``Settings`` into policy objects, so the simulator and the live
executor build the very same policies with the very same parameters
(``settings.policy_args``, checked when the settings were made).
"""

from __future__ import annotations

from pregate.simulator.policies.params import kwargs_for


def make_speculation(spec_cls, layout, settings, source=None):
    """A speculation policy for ``settings``.

    A policy that needs more than the layout, the seed and its parameters (a
    trained model, the trace to train it on) defines ``from_settings(layout,
    settings, source)``; ``source`` is the trace being simulated, or None (the
    live executor). Every other policy gets its plain constructor.
    """
    build = getattr(spec_cls, "from_settings", None)
    if build:
        return build(layout, settings, source)
    return spec_cls(layout=layout, seed=settings.seed, **kwargs_for(spec_cls, settings.policy_args))


def caching_factory(cache_cls, layout, settings):
    """A maker of one caching policy per cache partition, with the settings' parameters for it."""
    kwargs = kwargs_for(cache_cls, settings.policy_args)
    return lambda: cache_cls(layout=layout, seed=settings.seed, **kwargs)
