"""Training: one member per Ray Train run (DDP), all members concurrently through Ray Tune."""
