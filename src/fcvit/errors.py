"""Errors a user can cause and fix: the CLI prints their message as one sentence, without a traceback."""


class UserError(Exception):
    """A problem with the user's input (path, file, model name, data layout) and how to fix it."""
