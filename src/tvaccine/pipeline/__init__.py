"""align → attack → evaluate as one cached, resumable run, and sweeps over grids of runs.

``config.py`` reads and checks a run config or a sweep; ``stages.py`` runs each stage once into its hashed folder;
``summary.py`` makes summary.csv's rows; ``sweep.py`` runs one config or a sweep's cells and writes the summary
and analysis files.
"""

from tvaccine.pipeline.config import (AXES, align_settings, attack_settings, check_run_config, expand_sweep,
                                      load_run_config)
from tvaccine.pipeline.stages import align_stage, compute_stage, run, run_align, run_attack, run_eval, stage_hash
from tvaccine.pipeline.summary import SUMMARY_COLUMNS, alignment_gate, scores_row, summary_row, write_summary
from tvaccine.pipeline.sweep import parse_shard, run_one, run_sweep, write_analysis

__all__ = ["AXES", "SUMMARY_COLUMNS", "align_settings", "align_stage", "alignment_gate", "attack_settings",
           "check_run_config", "compute_stage", "expand_sweep", "load_run_config", "parse_shard", "run", "run_align",
           "run_attack", "run_eval", "run_one", "run_sweep", "scores_row", "stage_hash", "summary_row",
           "write_analysis", "write_summary"]
