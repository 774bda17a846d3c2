"""Stages of the MER pipeline: raw corpora -> manifest -> features -> CMATH (or a baseline) -> metrics."""

__version__ = "0.1.0"
