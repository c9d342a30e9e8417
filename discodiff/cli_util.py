"""What every command shares: typed options, one-line errors, non-zero exits. Torch-free (the runtime
CLI uses it).

Bad input of any kind ends as one line `prog: error: what, why, what to do` and a non-zero exit:
`UserError`s, click's usage errors, and the operating system's refusals (disk full, permission denied,
read-only file system, a file where a folder should be), which name the path.
"""
from __future__ import annotations

import errno
import math
import re
import sys

import click

from discodiff.errors import UserError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
_ASCII_INT = re.compile(r"[+-]?[0-9]+")


class IntRange(click.IntRange):
    """click.IntRange that takes ASCII digits only (Python's int() also reads '٣' and other digits)."""

    def convert(self, value, param, ctx):
        if isinstance(value, str) and not _ASCII_INT.fullmatch(value.strip()):
            self.fail(f"{value!r} is not an integer", param, ctx)
        return super().convert(value, param, ctx)


class FloatRange(click.FloatRange):
    """click.FloatRange that refuses nan and inf (a NaN passes every range comparison)."""

    name = "finite float"

    def convert(self, value, param, ctx):
        v = super().convert(value, param, ctx)
        if not math.isfinite(v):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return v


# errno -> what to do about it
_OS_HINTS = {
    errno.ENOSPC: "the disk is full; free some space or choose another location",
    errno.EDQUOT: "the disk quota is exhausted; free some space or choose another location",
    errno.EACCES: "permission denied; check the permissions or choose another location",
    errno.EPERM: "the operation is not permitted there (an immutable or protected path); choose another location",
    errno.EROFS: "the file system is read-only; choose another location",
    errno.ENOTDIR: "a file stands where a folder is needed; choose another path",
    errno.EISDIR: "a folder stands where a file is needed; choose another path",
    errno.ENOENT: "the path does not exist",
    errno.ENAMETOOLONG: "the path is too long",
}


def os_error_line(e: OSError) -> str:
    """`path: what the system said (ERRNO); what to do`."""
    where = e.filename if e.filename is not None else "a file or folder"
    hint = _OS_HINTS.get(e.errno, "choose another location")
    name = errno.errorcode.get(e.errno, "") if e.errno else ""
    return f"{where}: {e.strerror or e}{' (' + name + ')' if name else ''}; {hint}"


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
    except OSError as e:
        click.echo(f"{prog}: error: {' '.join(os_error_line(e).split())}", err=True)
        return 1
    except MemoryError:
        click.echo(f"{prog}: error: out of memory; lower --batch or free memory", err=True)
        return 1


def main_for(command: click.Command, prog: str):
    def main() -> None:
        sys.exit(run(command, prog=prog))

    return main
