"""What every command shares: one-line errors, non-zero exits. Torch-free (the runtime CLI uses it)."""
from __future__ import annotations

import sys

import click

from .errors import UserError


def run(command: click.Command, args: list[str] | None = None, prog: str | None = None) -> int:
    """Run a click command; bad input of any kind prints one line `prog: error: ...` and exits non-zero."""
    prog = prog or command.name
    try:
        command.main(args=args, prog_name=prog, standalone_mode=False)
        return 0
    except UserError as e:
        click.echo(f"{prog}: error: {e}", err=True)
        return e.exit_code
    except click.exceptions.NoArgsIsHelpError as e:
        click.echo(e.ctx.get_help() if e.ctx else str(e), err=True)
        return 2
    except click.UsageError as e:  # bad option / value: one line, with the hint click would give
        click.echo(f"{prog}: error: {' '.join(e.format_message().split())} (see {prog} --help)", err=True)
        return 2
    except click.exceptions.Abort:
        click.echo(f"{prog}: aborted", err=True)
        return 130
    except click.exceptions.Exit as e:
        return e.exit_code
    except KeyboardInterrupt:
        click.echo(f"{prog}: interrupted", err=True)
        return 130


def main_for(command: click.Command, prog: str):
    def main() -> None:
        sys.exit(run(command, prog=prog))

    return main
