"""The one exception type the CLI turns into a one-line message and a non-zero exit."""


class HarnessError(Exception):
    """A problem with the user's input (config, paths, data, tracking URI), stated in one line."""


class DataError(HarnessError, ValueError):
    """A dataset file or root is missing, malformed or unsuitable, stated in one line naming the file."""
