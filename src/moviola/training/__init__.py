"""Training loops and checkpoint I/O."""
