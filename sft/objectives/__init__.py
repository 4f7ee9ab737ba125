"""Training objectives beyond TRL's plain SFT: one module per objective, plus what they share.

`kd.py` (soft labels, off-policy: stored top-k or a local teacher) with its loss (`kd_loss.py`) and data
columns (`kd_data.py`); `gkd.py` (on-policy, the teacher seeing its own prompt); `teacher_view.py`, the
teacher's prompt + the student's completion. A new objective is a module here and its test; the trainer
it needs is chosen in `sft.training.run`.
"""
