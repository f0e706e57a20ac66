"""User-facing errors: one clear line and a non-zero exit, no traceback spew."""
import functools
import os
import sys


class UserError(Exception):
    """An error caused by the user's input (config, paths, data, checkpoints).

    Entry points catch it and print ``error: <message>`` on one line, then exit with status 2.
    """


def cli_main(func):
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
