"""Click command and group classes that print domain errors as click's one-line errors.

Library code raises :class:`aladdin.errors.AladdinError`; every ``aladdin`` command is built
with these classes (``@command``/``@group``), so the message reaches the user the same way
whether the command runs under ``aladdin`` or on its own (tests invoke commands directly).
"""

from __future__ import annotations

import functools

import click

from aladdin.errors import AladdinError


class Command(click.Command):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except AladdinError as exc:
            raise click.ClickException(str(exc)) from None


class Group(click.Group):
    command_class = Command

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except AladdinError as exc:
            raise click.ClickException(str(exc)) from None


Group.group_class = Group
command = functools.partial(click.command, cls=Command)
group = functools.partial(click.group, cls=Group)
