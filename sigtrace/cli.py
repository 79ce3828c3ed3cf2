"""The `sigtrace` command: a thin click layer. Commands live in sigtrace/commands/<name>.py,
parse options, call the library and render; errors map to exit codes here, in one place."""
from __future__ import annotations

import importlib
import sys

import click

from . import __version__
from .errors import SigtraceError

# name -> "module:attribute"; imported only when used, so `sigtrace report` never loads bcc.
COMMANDS = {
    "record": "sigtrace.commands.record:record",
    "report": "sigtrace.commands.report:report",
    "lab": "sigtrace.commands.lab:lab",
    "agent": "sigtrace.commands.agent:agent",
    "export": "sigtrace.commands.export:export",
    "analyze": "sigtrace.commands.analyze:analyze",
    "compact": "sigtrace.commands.compact:compact",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None:
            return None
        module, attr = target.split(":")
        return getattr(importlib.import_module(module), attr)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="sigtrace")
def cli() -> None:
    """Explain why pods drop requests when they stop.

    \b
    Record the signals, exits and TCP closes/resets of stopping pods, then get a
    per-pod shutdown report that names the cause and its fix.

    \b
    Examples:
      sudo sigtrace record --output /tmp/rec --duration 60
      sigtrace report /tmp/rec
      sudo sigtrace lab --prestop 'nginx -s quit' --stop-signal nginx=TERM
    """


def error_line(message: str) -> None:
    # messages quote tenant data (pod names, paths, recorded values): escapes, not terminal controls
    from .render.safe import visible
    click.echo(f"sigtrace: error: {visible(message)}", err=True)


def main(argv: list[str] | None = None) -> None:
    try:
        rc = cli.main(args=argv, prog_name="sigtrace", standalone_mode=False)
    except click.exceptions.Abort:
        error_line("interrupted")
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except SigtraceError as exc:
        error_line(str(exc))
        sys.exit(exc.exit_code)
    except BrokenPipeError:
        sys.exit(0)
    sys.exit(rc if isinstance(rc, int) else 0)
