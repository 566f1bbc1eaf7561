"""Detection core: rules, state and scoring. Pure: never imports Kafka, web or CLI code."""

from fraudstream.detection.engine import Engine
from fraudstream.detection.rules import Hit, Rule, ThresholdRule, tutorial_rules

__all__ = ["Engine", "Hit", "Rule", "ThresholdRule", "tutorial_rules"]
