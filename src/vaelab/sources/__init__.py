"""The raw MNIST files: where they come from (fetch), what they must hash to, how to read IDX."""
