"""The one exception type for mistakes a user can fix."""

import unicodedata


class CnnlabError(Exception):
    """A user error: the message says what was wrong and what would be right.

    The CLI prints the message as one line on stderr and exits with code 2. The message is kept to one line
    here, whatever it quotes: control characters from the user's input (a newline in a key) are escaped.
    Programming errors are not wrapped in it and raise as usual.
    """

    def __init__(self, *args: object):
        if args and isinstance(args[0], str):
            args = (one_line(args[0]), *args[1:])
        super().__init__(*args)


def one_line(text: str) -> str:
    """``text`` with every control character (newline, carriage return, NUL, ...) written as an escape."""
    if text.isprintable():
        return text
    return "".join(ch.encode("unicode_escape").decode("ascii") if unicodedata.category(ch)[0] == "C" else ch
                   for ch in text)
