"""The stages of a run, one module each, all with the same contract (:mod:`search.stages.base`: ``NAME``,
``SECTIONS``, ``problems(cfg, run)``, ``run(cfg, run, ctx)``), in the order of :data:`search.pipeline.STAGES`:
:mod:`~search.stages.optimize` (the Ray-parallel Optuna search, stage ``search``), :mod:`~search.stages.heldout`,
:mod:`~search.stages.export`, :mod:`~search.stages.dpo`, :mod:`~search.stages.mtbench` and
:mod:`~search.stages.report`.

The other modules here are their parts: :mod:`~search.stages.trial_worker` and :mod:`~search.stages.selection`
(the search's worker and item order), :mod:`~search.stages.candidates` (the models a run compares),
:mod:`~search.stages.dpo_train` and :mod:`~search.stages.prefdata` (DPO), :mod:`~search.stages.chat_templates`
(which models have a chat template), :mod:`~search.stages.plots` (report and DPO figures). A stage module never
imports another stage module. This package's ``__init__`` imports nothing; the public names are re-exported by
:mod:`search`.
"""
