"""The exception raised for bad data inputs (missing files, malformed records, bad sizes)."""


class DataError(ValueError):
    """A data input problem, described in one line that names the problem and the fix.

    Subclasses ValueError so callers that already handle bad arguments catch it too; the CLI
    tools print ``error: <message>`` and exit with status 2 instead of a traceback.
    """
