"""Checkpoint and tokenizer file formats behind model.py's loaders."""
