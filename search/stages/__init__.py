"""The stages of a run, one module each, in pipeline order: :mod:`~search.stages.search` (the Ray-parallel
Optuna search), :mod:`~search.stages.heldout`, :mod:`~search.stages.export`, :mod:`~search.stages.dpo`,
:mod:`~search.stages.mtbench` and :mod:`~search.stages.report`, plus :mod:`~search.stages.world` (the demo
world a config may name). Each takes its config section (or the whole :class:`~search.config.RunConfig`) and a
:class:`~search.rundir.RunDir` and returns a typed result; :mod:`search.pipeline` chains them.

This package's ``__init__`` imports nothing: :mod:`search.config` imports the DPO section's schema from
:mod:`search.stages.dpo_config`, and the stages import :mod:`search.config`. The public names are re-exported
by :mod:`search`.
"""
