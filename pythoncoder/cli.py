"""``pythoncoder`` command line: a thin dispatcher over the sub-packages.

Each sub-command lives in the package that owns it and is imported only when used, so
``pythoncoder info`` never pays for the data or training imports.  A command module
exposes ``configure_<name>(parser)``, which adds its arguments and sets ``func``; importing
it must not import JAX (it loads inside ``func``), so a typo or ``--help`` answers at once
(``tests/harness/test_first_contact.py``).  Before ``func`` runs, JAX starts with the
driver messages of the ``targets`` extra dropped (``utils.platforms.start_jax``), unless
the command sets ``starts_jax=False`` (it needs no JAX, or starts it itself).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from pythoncoder.utils.argtypes import EXIT_CODES_HELP, EXIT_USAGE, UsageError
from pythoncoder.utils.platforms import default_to_cpu, start_jax

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "info": ("pythoncoder.model.commands", "model config and abstract parameter count"),
    "prepare": ("pythoncoder.data.commands", "tokenize and pack sources into shards"),
    "train": ("pythoncoder.train.commands", "train a preset (default: tiny on the stdlib)"),
    "memory": ("pythoncoder.train.commands", "compiled memory analysis of the train step"),
    "generate": ("pythoncoder.infer.commands", "generate from a trained run"),
    "eval": ("pythoncoder.eval.commands", "HumanEval / MBPP pass@k in a sandbox"),
    "export": ("pythoncoder.infer.commands", "portable weights: safetensors + config + tokenizer"),
    "device-check": ("pythoncoder.devicecheck", "kernels, train MFU and decode on a GPU/TPU "
                     "(--dry-run: on the CPU)"),
}


class Parser(argparse.ArgumentParser):
    """Usage errors as one line (``pythoncoder train: error: ...``) and exit code 2."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = Parser(prog="pythoncoder", description=__doc__.splitlines()[0],
                                     epilog=EXIT_CODES_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        if name != only:
            continue
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name and e.name.startswith("pythoncoder"):
                p.set_defaults(func=lambda _a, n=name: _not_available(n))
                continue
            raise
        getattr(mod, f"configure_{name.replace('-', '_')}")(p)
    return parser


def _not_available(name: str) -> int:
    print(f"pythoncoder {name}: not available in this build", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    default_to_cpu()  # before any command imports jax: no accelerator plugin noise on a CPU host
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in COMMANDS else None)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if args.command is None else 2
    try:
        if getattr(args, "starts_jax", True):
            start_jax()
        return int(args.func(args) or 0)
    except UsageError as e:  # bad input found after parsing: one line, like argparse's
        print(f"pythoncoder {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # e.g. `pythoncoder info | head`
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
