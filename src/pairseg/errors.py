"""Exceptions shared by the PairSeg engine.

`PairSegInputError` marks bad user input (unreadable file, wrong dimensionality, mismatched
geometry, unknown segment names...). The CLI turns it into an ``error`` event and exit code 2.
"""

from __future__ import annotations


class PairSegError(Exception):
    """Base class of PairSeg's own errors."""


class PairSegInputError(PairSegError, ValueError):
    """Bad input data; the message names the file (when there is one) and the problem."""
