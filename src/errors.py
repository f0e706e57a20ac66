"""User-facing errors: one clear line and a non-zero exit, no traceback spew."""
from __future__ import annotations

import contextlib
import functools
import os
import re
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator


class UserError(Exception):
    """An error caused by the user's input (config, paths, data, checkpoints).

    Entry points catch it and print ``error: <message>`` on one line, then exit with status 2.
    """


def cli_main(func: Callable) -> Callable:
    """Decorate an entry point's ``main(argv)`` so that a UserError becomes one line and exit 2.

    Set ``RESNET_THOR_DEBUG=1`` to see the full traceback instead.
    """

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except UserError as exc:
            if os.environ.get("RESNET_THOR_DEBUG"):
                raise
            print(f"error: {exc}", file=sys.stderr, flush=True)
            sys.exit(2)
        except KeyboardInterrupt:
            print("error: interrupted", file=sys.stderr, flush=True)
            sys.exit(130)

    return wrapper


_DATA_FILE = re.compile(r"The corresponding data file is: (.+?)\.\s+(.*?)(?:\n|$)")


@contextlib.contextmanager
def data_errors() -> Iterator[None]:
    """Turn a MindSpore data-pipeline failure on one file (a corrupt or non-image file) into a
    UserError that names the file."""
    try:
        yield
    except RuntimeError as exc:
        m = _DATA_FILE.search(str(exc))
        if not m:
            raise
        reason = m.group(2).strip().rstrip(".") or "decode failed"
        raise UserError(f"{m.group(1)}: cannot be read as an image ({reason}); fix or remove the file") from None
