"""merge-search: evolutionary merge search for German LLMs, as a library.

Data flows one way: config -> space -> merge -> objective -> study -> export -> DPO -> MT-Bench. The
command line (:mod:`search.cli`) is a thin shell over the names below; see ``docs/architecture.md``.

::

    from search import load_run_config, run_pipeline
    run = run_pipeline(load_run_config("configs/demo.yaml"))   # a RunDir
"""

from search.config import RunConfig, load_run_config, resolve_device, save_run_config, seed_recipe
from search.configref import config_reference
from search.driver import Driver, RungReport, SearchConfig, load_study, ranked_trials
from search.merge import (
    MergeError,
    MergeResult,
    Recipe,
    ResidentMerger,
    SpaceConfig,
    hash_model_dir,
    merge_to_dir,
    record_of,
    remerge,
    to_merge_config,
    weights_sha256,
)
from search.dpo_config import DPOStageConfig
from search.pipeline import STAGES, StageContext, StageInterrupted, check_run, run_pipeline, stage_names
from search.rundir import DPOOutputs, RunDir, TrialAttr, TrialRecord
from search.stages.dpo import load_dpo_config, run_dpo
from search.stages.export import export_trial, pick_trial, winner
from search.stages.heldout import evaluate
from search.stages.heldout_report import HeldoutReport, ModelScores
from search.stages.mtbench import chat_model, mtbench_config, run_mtbench_stage
from search.stages.optimize import SearchSummary, run_search
from search.stages.report import headline, write_report
from search.stages.trial_worker import MergeEvalWorker, MergeInfo

__all__ = [
    "STAGES",
    "DPOOutputs",
    "DPOStageConfig",
    "Driver",
    "HeldoutReport",
    "MergeError",
    "MergeEvalWorker",
    "MergeInfo",
    "MergeResult",
    "ModelScores",
    "Recipe",
    "ResidentMerger",
    "RunConfig",
    "RunDir",
    "RungReport",
    "SearchConfig",
    "SearchSummary",
    "SpaceConfig",
    "StageContext",
    "StageInterrupted",
    "TrialAttr",
    "TrialRecord",
    "chat_model",
    "check_run",
    "config_reference",
    "evaluate",
    "export_trial",
    "hash_model_dir",
    "headline",
    "load_dpo_config",
    "load_run_config",
    "load_study",
    "merge_to_dir",
    "mtbench_config",
    "pick_trial",
    "ranked_trials",
    "record_of",
    "remerge",
    "resolve_device",
    "run_dpo",
    "run_mtbench_stage",
    "run_pipeline",
    "run_search",
    "save_run_config",
    "stage_names",
    "seed_recipe",
    "to_merge_config",
    "weights_sha256",
    "winner",
    "write_report",
]
