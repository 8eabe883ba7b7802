"""The one exception type for mistakes a user can fix."""


class CnnlabError(Exception):
    """A user error: the message says what was wrong and what would be right.

    The CLI prints the message as one line on stderr and exits with code 2.
    Programming errors are not wrapped in it and raise as usual.
    """
