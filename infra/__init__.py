"""The plumbing of a run, off the reading path: config parsing, torchrun, resumable checkpoints,
the OpenAI-compatible server."""
