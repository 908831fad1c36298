"""One exception type for bad input: reported as one clear line, never a bare traceback."""


class UserError(Exception):
    """Bad input data, config or environment. The message names the file/line or config key."""
