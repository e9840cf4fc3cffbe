"""What every stage shares: the params schema, artifact paths, MNIST's shape, errors, atomic
writes and the stage wrapper. Every stage depends on this folder."""
