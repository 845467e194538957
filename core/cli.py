"""``lesionlab <command> [ARGS]``: the project's one command line (also ``python -m core <command>``).

Each command is a module's own ``main(argv)`` (the table is
:data:`core.contracts.cli_args.COMMANDS`), handed the arguments after the command's
name: its parser, ``--help`` and exit codes are its own. The module is imported only
when its command runs, so ``lesionlab --help`` answers at once and imports no TensorFlow.
"""

import importlib
import sys

from core.contracts.cli_args import COMMANDS, PACKAGE, PROGRAM

EXIT_USAGE = 2


def help_text() -> str:
    """What ``lesionlab --help`` prints: the usage and one line per command."""
    width = max(map(len, COMMANDS)) + 2
    lines = [f"usage: {PROGRAM} <command> [ARGS...]", "",
             "HAM10000 Lesion Lab on the command line; each command has its own --help.", "", "commands:"]
    lines += [f"  {name:<{width}}{command.summary}" for name, command in COMMANDS.items()]
    lines += ["", f"Where the {PROGRAM} script is not on PATH: python -m {PACKAGE} <command> [ARGS...]"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    """Run ``lesionlab``: hand ``argv[1:]`` to the ``main`` of the command ``argv[0]`` names; its exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(help_text(), end="", file=sys.stdout if argv else sys.stderr)
        return 0 if argv else EXIT_USAGE
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"{PROGRAM}: error: unknown command {name!r}; the commands are {', '.join(COMMANDS)}", file=sys.stderr)
        return EXIT_USAGE
    return importlib.import_module(COMMANDS[name].module).main(rest)
