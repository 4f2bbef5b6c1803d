"""Producer role: publish windows to the input stream and read results back. Never imports torch."""

from producer.client import AsyncProducer, ClassifyError, Producer
from producer.group_reader import GroupResultsReader
from producer.results import ResultsReader
from protocol.durability import ReplicaAckError

__all__ = ["AsyncProducer", "ClassifyError", "GroupResultsReader", "Producer", "ReplicaAckError", "ResultsReader"]
