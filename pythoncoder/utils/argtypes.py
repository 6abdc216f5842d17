"""argparse value types and the usage error of every sub-command (exit code 2, one line).

Exit codes of ``pythoncoder`` (README, "Exit codes"):

- ``0``: done.
- ``1``: the command ran and failed (a corrupt or missing checkpoint, a run directory held
  by another process, non-finite training, a failed save, unreadable data).
- ``2``: bad input, found before any work: an invalid option value, a mesh that does not
  match the devices, seq_len above the model's positions or not the data's, an empty
  prepared directory, an unwritable ``--out``, an over-long prompt.
- ``75`` (``EX_TEMPFAIL``): training was interrupted by SIGTERM or SIGINT after saving a
  checkpoint; continue it with ``--resume``.
"""

from __future__ import annotations

import argparse
import re
import tempfile
from pathlib import Path

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 75
EXIT_CODES_HELP = ("exit codes: 0 done; 1 failed (checkpoint, lock, non-finite, save error); "
                   "2 bad input; 75 interrupted by SIGTERM/SIGINT after a checkpoint "
                   "(continue with --resume)")


class UsageError(ValueError):
    """Bad input found after parsing (needs the devices, the data or the disk): exit 2."""


def _number(kind, text: str):
    try:
        return kind(text)
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None


def positive_int(text: str) -> int:
    value = _number(int, text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def nonnegative_int(text: str) -> int:
    value = _number(int, text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def positive_float(text: str) -> float:
    value = _number(float, text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def nonnegative_float(text: str) -> float:
    value = _number(float, text)
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def fraction(text: str) -> float:
    """A float in [0, 1]."""
    value = _number(float, text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


def unit_interval(text: str) -> float:
    """A float in (0, 1] (top-p)."""
    value = _number(float, text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def mesh_shape(text: str) -> tuple[int, int]:
    """``DATAxFSDP``, e.g. ``2x4``: two positive integers."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not m or int(m[1]) < 1 or int(m[2]) < 1:
        raise argparse.ArgumentTypeError(f"expected DATAxFSDP with positive integers, e.g. "
                                         f"1x8; got {text!r}")
    return int(m[1]), int(m[2])


def check_out_dir(out: Path, flag: str = "--out", *, file: bool = False) -> None:
    """``out`` (with ``file``: the directory of the file ``out``) must be a directory we can
    write, or one we can create (tried, not guessed: root ignores modes); ``UsageError``
    otherwise.  Nothing is created."""
    if file and out.is_dir():
        raise UsageError(f"{flag} {out} is a directory, not a file")
    probe = out.parent if file else out
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise UsageError(f"{flag} {out}: {probe} is not a directory")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as e:
        raise UsageError(f"{flag} {out}: cannot write in {probe} ({e.strerror})") from None
