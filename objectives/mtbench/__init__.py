"""MT-Bench(-de): two-turn answers, LLM judging and FastEval-compatible scores.

Stages, one module each: :mod:`.questions` (load question sets), :mod:`.generate` (two-turn answers),
:mod:`.prompts` (judge conversations, language a parameter), :mod:`.judges` (HTTP / local HF / offline
stand-in backends), :mod:`.scores` (FastEval's aggregation) and :mod:`.compare` (tables and charts).
The run config section is :class:`.config.MTBenchConfig` (``mtbench:`` in the run YAML).
"""
