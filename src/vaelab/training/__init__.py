"""Training: input pipeline, KL schedule, optimizer, callbacks and the resumable train loop."""
