"""Evaluation: metrics, backtests over recorded history, model training."""

from fraudstream.evaluation.backtest import BacktestResult, backtest, outcomes
from fraudstream.evaluation.metrics import Outcome, Report, format_report, report
from fraudstream.evaluation.sources import (
    read_decisions,
    read_labels,
    read_transactions,
)
from fraudstream.evaluation.train import TrainResult, train

__all__ = [
    "BacktestResult",
    "Outcome",
    "Report",
    "TrainResult",
    "backtest",
    "format_report",
    "outcomes",
    "read_decisions",
    "read_labels",
    "read_transactions",
    "report",
    "train",
]
