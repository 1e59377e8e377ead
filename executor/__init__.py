"""pregate.executor: offloaded MoE inference for real, device calibration, and validation of the simulator.

Entry points: :class:`~pregate.executor.run.TraceExecutor` (execute a trace's
routing with a synthetic model of its shapes), :class:`~pregate.executor.run.OffloadedModel`
and :func:`~pregate.executor.run.execute_model` (a Hugging Face or small-MoE model),
:func:`~pregate.executor.calibrate.calibrate` and :func:`~pregate.executor.validate.validate`.
The policies are the simulator's own objects (see executor/README.md).
"""
