"""The one exception type the CLI turns into a one-line message and exit status 2."""


class OmnitraceError(Exception):
    """Bad input or an unusable environment; str() is a complete sentence for the user."""
