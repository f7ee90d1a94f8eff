"""Errors a user caused (a bad argument, a bad file), as opposed to bugs.

Scripts catch `UserInputError` and end with its one-line message and a non-zero exit status (the traceback is
shown with `--debug`). It subclasses `ValueError`, so code that already expects a `ValueError` still works.
"""


class UserInputError(ValueError):
    """Bad input from the user: the message names the argument or file, what was found and what was expected."""
