"""The one error type a user sees: a problem with their input, said in one line."""


class AutotuneError(Exception):
    """Bad input from the user (a file, a variable, an option).

    The CLI prints the message on one line and exits with status 2; nothing else
    is printed and nothing is written.
    """

    exit_status = 2
