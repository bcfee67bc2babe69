"""Bad input, as one exception type.

``InputError`` is a ``ValueError`` raised on purpose by a check of what a caller
gave: a config key (docs/spec.md §2.1), an option, a file. Its message is one
line that says what is wrong and where. The command line reports it as
``qz: error: <message>`` with exit code 1; any other exception that escapes is
a bug and keeps its traceback (``QZ_DEBUG=1`` shows the traceback of an
``InputError`` too).
"""

__all__ = ["InputError"]


class InputError(ValueError):
    """Bad input, found by a check; the message is one line naming what is wrong."""
