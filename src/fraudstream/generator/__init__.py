"""The transaction generator."""

from fraudstream.generator.app import GeneratorStats, generate
from fraudstream.generator.pacing import Pacer
from fraudstream.generator.tutorial import TutorialSource

__all__ = ["GeneratorStats", "Pacer", "TutorialSource", "generate"]
