"""The training loop behind ``sftrl train`` (and ``ray job submit``): its typed config, data, RL step,
metrics, in-stage combinations and the registry kept true to the run folders."""
