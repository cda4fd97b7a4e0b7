"""The one exception type the CLI turns into a one-line message and a non-zero exit."""


class HarnessError(Exception):
    """A problem with the user's input (config, paths, data, tracking URI), stated in one line."""
