"""Distillery's training side: recipe-driven TRL trainers and evaluation.

Sub-packages, read in this order: `training` (`sft run`: one arm on TRL), `objectives` (the trainers
and losses TRL lacks), `compression` (`sft prune`), `evaluation` (`sft eval`). `cli.py` ties them to
the command line.
"""
