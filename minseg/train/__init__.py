"""Training: one member per Ray Train run (DDP), all members concurrently, each run from a Ray task."""
