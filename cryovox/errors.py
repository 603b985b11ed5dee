"""Errors that the command line turns into one line and exit code 2."""


class InputError(Exception):
    """A problem with the user's files or options: printed as one line, exit code 2.

    The message names the file (or option) and the problem, e.g.
    ``InputError(f"{path}: map is 64×64×60; a cubic map is needed")``.
    """
