"""Job entry points: the training loop behind `sftrl train` (also what `ray job submit` runs)."""
