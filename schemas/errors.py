"""The one base class of every error that stops a run before or between its phases (a bad config, a
pool or run folder written by other settings or another version, a missing input file). The command
line catches it and prints its message as one line with exit code 2; any other exception is a bug
and keeps its traceback. Errors of one input never stop a run: they are rows (stages.errors)."""


class PipelineError(ValueError):
    """A run cannot start or go on; the message says why and what to do, in one line."""
