"""Producer role: publish windows to the input stream and read results back. Never imports torch."""

from producer.client import Producer
from producer.group_reader import GroupResultsReader
from producer.results import ResultsReader

__all__ = ["GroupResultsReader", "Producer", "ResultsReader"]
