"""Evaluation harness of the paper's protocol: `python -m indigo_core.eval` (see __main__ for the
command line), or `evaluate(EvalOptions(...))` from Python."""

from .run import ALL_METRICS, EvalOptions, EvalOutcome, OutputExistsError, RestoreCommandError, evaluate, rebuild_table

__all__ = ["EvalOptions", "EvalOutcome", "evaluate", "rebuild_table", "OutputExistsError", "RestoreCommandError",
           "ALL_METRICS"]
