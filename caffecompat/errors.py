"""The one error type users see: the CLI prints its message on one line and exits 1."""


class CaffeCompatError(Exception):
    """A problem with the user's files, flags or nets, stated so the user can fix it.

    The message names the file, layer or field at fault and, where there is
    one, the fix. Anything else that escapes is a bug in caffecompat.
    """


class NotSupportedError(CaffeCompatError):
    """A Caffe feature caffecompat does not implement yet ("not supported: X")."""

    def __init__(self, what: str) -> None:
        super().__init__(f"not supported: {what}")
