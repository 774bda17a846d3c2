"""Stages of the MER pipeline: raw corpora -> manifest -> features -> CMATH -> metrics."""

__version__ = "0.1.0"
