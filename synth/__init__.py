"""Distillery's data side: records, engines, generation, curation, review and publishing."""

__version__ = "0.1.0"
