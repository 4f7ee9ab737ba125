"""`sft eval`: every model of a run on held-out prompts, and an honest report of what changed.

`run.py` answers the prompts with each model and gathers the measures: `fidelity.py` (KL and NLL to
the teacher), `quality.py` (degeneration), `benchmarks.py` (lm-evaluation-harness tasks), `speed.py`
(bench/speed.py's timings of the model folders). `report.py` turns them into rates with intervals,
paired comparisons, report files and a picture.
"""
