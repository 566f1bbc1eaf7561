"""Detection core: rules, keyed event-time state, features, model scoring.

Pure: never imports Kafka, web or CLI code, never reads the wall clock.
"""

from fraudstream.detection.engine import Engine
from fraudstream.detection.features import FEATURE_NAMES, FeatureState, Label
from fraudstream.detection.model import FraudModel, ModelError
from fraudstream.detection.rules import (
    DormantAccount,
    FanIn,
    Hit,
    ImpossibleTravel,
    ListMatch,
    Rule,
    SmallThenLarge,
    ThresholdRule,
    Velocity,
    tutorial_rules,
)
from fraudstream.detection.ruleset import (
    RulesError,
    RuleSet,
    check_rules_file,
    load_ruleset,
    parse_duration,
)
from fraudstream.detection.state import DAY, HOUR, MINUTE, Table, Tables

__all__ = [
    "DAY",
    "FEATURE_NAMES",
    "HOUR",
    "MINUTE",
    "DormantAccount",
    "Engine",
    "FanIn",
    "FeatureState",
    "FraudModel",
    "Hit",
    "ImpossibleTravel",
    "Label",
    "ListMatch",
    "ModelError",
    "Rule",
    "RuleSet",
    "RulesError",
    "SmallThenLarge",
    "Table",
    "Tables",
    "ThresholdRule",
    "Velocity",
    "check_rules_file",
    "load_ruleset",
    "parse_duration",
    "tutorial_rules",
]
