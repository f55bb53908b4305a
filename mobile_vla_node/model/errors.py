"""Model-loading errors, importable without torch (the node catches them for every backend)."""


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not fit the model."""
