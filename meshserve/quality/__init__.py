"""Model quality, pure: exact metrics on joined predictions and labels (`metrics`), AUC estimates with their
variance (`auc`), anytime-valid comparisons of a canary against its baseline (`sequential`) and a seeded,
simulated-clock harness for a rollout judge built on them (`simulation`). No I/O, no gRPC, no clock or RNG of its
own: the monitor service and the gateway's rollout judge import it. Imports only numpy and the standard library."""

from meshserve.quality.auc import AucEstimate, ScoreHistogram, delong
from meshserve.quality.metrics import (
    BinaryQuality,
    Calibration,
    LabelSummary,
    RegressionQuality,
    ReliabilityBin,
    binary_quality,
    label_summary,
    log_losses,
    regression_quality,
)
from meshserve.quality.sequential import (
    VERDICTS,
    Comparison,
    Moments,
    compare_auc,
    compare_error_rates,
    compare_log_loss,
)

__all__ = [
    "VERDICTS",
    "AucEstimate",
    "BinaryQuality",
    "Calibration",
    "Comparison",
    "LabelSummary",
    "Moments",
    "RegressionQuality",
    "ReliabilityBin",
    "ScoreHistogram",
    "binary_quality",
    "compare_auc",
    "compare_error_rates",
    "compare_log_loss",
    "delong",
    "label_summary",
    "log_losses",
    "regression_quality",
]
