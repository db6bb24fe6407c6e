"""The domain error: a problem with the user's input or environment, explained in one line.

It is a plain exception, so the scheduler core (and a vLLM engine that loads it) never
imports the CLI toolkit; the CLI turns it into its one-line ``Error: ...`` (aladdin.clicommand).
"""


class AladdinError(Exception):
    """A problem with the user's input or environment, explained in one line."""
