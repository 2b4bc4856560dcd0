"""Training: optimizer and schedule, train state and step, sharding, checkpointing, the loop."""
