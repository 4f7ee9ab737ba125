"""Distillery's training side: recipe-driven TRL trainers and evaluation."""
