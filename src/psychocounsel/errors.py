"""The one exception type users see."""


class UserError(Exception):
    """Bad input from the user (file, config, option).

    The CLI prints ``psychocounsel: error: <message>`` on one line and exits with code 2,
    so the message must say what is wrong and, where it can, how to fix it.
    """
