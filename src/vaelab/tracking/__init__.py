"""MLflow: the store connection, run identity and tags, and the outbox. Only talks to MLflow;
nothing here changes a DVC output."""
