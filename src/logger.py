"""Console + file logging; every rank keeps its own log file, rank 0 alone writes to the console."""
import os
import sys
import time


class Logger:
    def __init__(self, folder=None, rank=0, group_size=1, name="train"):
        self.rank = rank
        self.prefix = f"[rank {rank}] " if group_size > 1 else ""
        self.console = rank == 0
        self.path = None
        if folder:
            suffix = f"_rank{rank}" if group_size > 1 else ""
            self.path = os.path.join(folder, f"{name}{suffix}.log")

    def _to_file(self, line):
        if self.path:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(time.strftime("%Y-%m-%d %H:%M:%S ") + line + "\n")

    def __call__(self, message):
        line = f"{self.prefix}{message}"
        if self.console:
            print(line, flush=True)
        self._to_file(line)

    def everywhere(self, message):
        """Print on every rank's console (msrun captures each worker's console in its own log)."""
        line = f"{self.prefix}{message}"
        print(line, flush=True)
        self._to_file(line)

    def warning(self, message, write=None):
        """``write``: where the console line goes instead of sys.stderr (the native-log filter's writer)."""
        line = f"{self.prefix}warning: {message}"
        if self.console:
            if write is not None:
                write(line + "\n")
            else:
                print(line, file=sys.stderr, flush=True)
        self._to_file(line)
