"""Running a training arm: the recipe's objective on TRL, seeds, checkpoints, and what `max_length` cuts.

`run.py` builds the trainer an objective asks for (`sft.objectives`) and saves train/<arm>/[seed-<s>/];
`args.py` checks `train.args` against TRL's config; `checkpoints.py` picks what `--resume` continues;
`lengths.py` says before training what the length cut does to the rows.
"""
