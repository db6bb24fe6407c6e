"""User-facing errors: the CLI prints their message on one line, never a traceback."""

import click


class AladdinError(click.ClickException):
    """A problem with the user's input or environment, explained in one line."""
