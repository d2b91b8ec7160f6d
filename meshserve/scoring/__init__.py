"""Bulk scoring: rows from a file, validated against the route's request features, scored in large Predicts.
Imports the feature registry and the core's prediction-id rule; imported by the CLI."""

from meshserve.scoring.checkpoint import Checkpoint, Fingerprint, PartResult
from meshserve.scoring.rows import FeatureSpec, Reject, RowSchema, ValidRow
from meshserve.scoring.runner import PredictFailed, Scored, ScoringInterrupted, ScoringSummary, run_scoring

__all__ = [
    "Checkpoint",
    "FeatureSpec",
    "Fingerprint",
    "PartResult",
    "PredictFailed",
    "Reject",
    "RowSchema",
    "Scored",
    "ScoringInterrupted",
    "ScoringSummary",
    "ValidRow",
    "run_scoring",
]
