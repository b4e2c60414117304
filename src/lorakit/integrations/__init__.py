"""Integrations with other training libraries (transformers Trainer, TRL)."""
