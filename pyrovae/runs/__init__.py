"""A run directory on disk: its files (config, checkpoint, metrics), the one process that writes it (lock,
prepare, clear), and reading a run back."""
