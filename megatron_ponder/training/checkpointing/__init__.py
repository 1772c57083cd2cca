"""Checkpoints of a training run: everything that writes, reads or guards a ``--save`` folder.

* :mod:`.save_load`: save, resume, weights-only loads, retention, async saves, the latest pointer;
* :mod:`.strategies`: Megatron-Core's fully parallel save/load strategy wrappers
  (``--ckpt-fully-parallel-save`` / ``--ckpt-fully-parallel-load``);
* :mod:`.checksums`: per-file CRC-32 checksums written with a save and checked at load;
* :mod:`.errors`: one-line diagnoses of damaged or foreign checkpoint files;
* :mod:`.rng_state`: the random generators saved for a bit-exact resume with dropout;
* :mod:`.run_identity`: which run a folder belongs to, the flags a resume must keep,
  ``--finetune`` / ``--use-checkpoint-args``;
* :mod:`.run_lock`: one run per ``--save`` folder;
* :mod:`.exit_signals`: ``--exit-signal-handler`` / ``--exit-duration-in-mins`` (save, then stop).

The step, the logger and the model do not import this package; ``pretrain`` and the HF
converters do.
"""
