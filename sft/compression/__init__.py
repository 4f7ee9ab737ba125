"""Making a student smaller than its teacher before distillation: `prune.py` removes whole layers."""
