"""The one exception every user-fixable error is raised as. A leaf: it imports nothing from rapid_cli,
so any module may raise it without pulling in the config schema or the registries."""


class RapidError(Exception):
    """An error the user can fix; the CLI prints its message as one line and exits 2."""
