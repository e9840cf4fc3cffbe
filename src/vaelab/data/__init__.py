"""The prepared data: how the prepare stage writes it and how every later stage reads it."""
