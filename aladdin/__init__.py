"""Aladdin: SLO-aware request placement and GPU scaling for vLLM clusters.

The package has three parts under one namespace: ``aladdin.plugin`` (the scheduler core,
simulator, planner, profiler), ``aladdin.loadgen`` (the open-loop trace replayer) and
``aladdin.analysis`` (metrics and reports). This top level holds the CLI and the local
vLLM harness (model folders and CPU clusters) that the other parts are tested against.
"""

__version__ = "0.1.0"
