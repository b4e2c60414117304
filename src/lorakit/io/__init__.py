"""Reading and writing adapters and checkpoints."""
