"""The errors a user sees, each said in one line: bad input (exit 2), failed measurement (1)."""


class AutotuneError(Exception):
    """Bad input from the user (a file, a variable, an option).

    The CLI prints the message on one line and exits with status 2; nothing else
    is printed and nothing is written.
    """

    exit_status = 2


class MeasurementFailed(AutotuneError):
    """The input was fine but the measurement was not: no trial finished, a worker died.

    The CLI prints the reason on one line and exits with status 1.
    """

    exit_status = 1
