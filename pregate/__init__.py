"""pregate: trace MoE routing, simulate expert offloading policies, validate on hardware.

The parts live in top-level folders and install under this namespace:
``pregate.traces`` (the trace format), ``pregate.tracer`` (model adapters and
routing capture), ``pregate.simulator``, ``pregate.executor`` and
``pregate.analysis``. This package itself only holds the command line.
"""

__version__ = "0.1.0"
