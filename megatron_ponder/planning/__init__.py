"""Scale planner: memory, FLOPs, communication and step time of a run before it is submitted.

One idea per module: ``shapes`` (what is planned: model, method, layout, cluster, precision),
``activations`` (bytes saved for backward per pass), ``schedule`` (pipeline order, in-flight
chunks, bubble), ``memory`` (per-GPU totals), ``communication`` (bytes per parallelism),
``step_time`` (FLOPs, time, tokens/s) and ``layouts`` (search). Formulas: docs/planning.md.
"""
