"""Helpers shared by the tests and their torchrun workers (not tests themselves).

Importable as ``support.<module>``: pytest puts ``tests/`` on the path (``pythonpath`` in
pyproject.toml), and :func:`support.torchrun.child_env` does the same for child processes.

* :mod:`support.tiny_models`: tiny PonderGPTModels, the reference copy of their weights, and
  the method/recompute variants the tests parametrise (``MODE_FIELDS``, ``RECOMPUTE_FIELDS``).
* :mod:`support.torchrun`: launch a script or module under torchrun from a test.
* :mod:`support.metrics`: the losses of a run's ``--metrics-file``.
* :mod:`support.worker`: the frame of every torchrun worker (warnings, results, shutdown).
* :mod:`support.planning_shapes`: the tiny models as the planner sees them.
* :mod:`support.saved_tensor_probe`: peak bytes saved for backward.
* :mod:`support.hf_tiny_models`, :mod:`support.gpu_models`, :mod:`support.indexed_documents`:
  tiny HF models, TE models for GPU tests, random indexed-dataset files.
"""
