"""The error a user sees for a bad input file (the CLI prints it as ``eclipse: error: <file>: <what>``)."""
from __future__ import annotations

__all__ = ["DataError"]


class DataError(ValueError):
    """A dataset, checkpoint or config file is missing, malformed, inconsistent or asks for more than its
    size allows. The message starts with the file."""
