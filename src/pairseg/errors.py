"""Exceptions shared by the PairSeg engine.

`PairSegInputError` marks bad user input (unreadable file, wrong dimensionality, mismatched
geometry, unknown segment names...). The CLI turns it into an ``error`` event and exit code 2.
"""

from __future__ import annotations


class PairSegError(Exception):
    """Base class of PairSeg's own errors."""


class PairSegInputError(PairSegError, ValueError):
    """Bad input data; the message names the file (when there is one) and the problem."""


class PairSegOutputError(PairSegInputError):
    """An output location that cannot be written (or would destroy an input or another output);
    the message names the user's path, never a temporary file. Exit code 2 like bad input."""


class PairSegWarning(UserWarning):
    """A readable input with a problem the user should know of; the CLI reports it as a message."""
