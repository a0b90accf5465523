"""Errors the workload layer raises; each message is one line naming what is wrong and the fix.

They subclass the built-in types callers already expect, so the CLI can catch ValueError /
FileNotFoundError, print the message and exit non-zero.
"""


class WorkloadConfigError(ValueError):
    """A workload config key is missing, unknown, or has a value outside its allowed set."""


class TraceFormatError(ValueError):
    """A length-trace CSV lacks a column or holds a non-numeric or negative value."""


class TraceNotFoundError(FileNotFoundError):
    """A length-trace CSV does not exist at the resolved path."""
