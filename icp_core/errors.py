"""The one exception type users see: a one-line message that says what is wrong and what to do."""


class IcpError(Exception):
    """A problem with the user's input or environment, reported as one line without a traceback."""
