"""Bad image files during training: the ``bad_images`` policy.

``stop`` (default): the first file that cannot be decoded stops the run with one line naming it
(src/errors.data_errors). Zero-byte files are found by the folder scan, before anything is compiled.

``skip``: MindSpore's ``ErrorSamplesMode.REPLACE`` (see ``mindspore.dataset.config.set_error_samples_mode``)
fills the slot of a sample that fails in the pipeline with another, healthy sample of the same pipeline,
so every epoch keeps its number of steps (schedules, checkpoints and exact resume stay valid; the plain
``SKIP`` mode would shorten epochs unpredictably). Each bad file is named once in a warning and counted.

MindSpore reports bad samples only in its native log (C++ glog lines on file descriptor 2), so while a
``NativeLogFilter`` is active, fd 2 goes through a pipe read by a thread here: the lines about bad samples
are turned into our warnings (``skip``) or dropped in favour of our one-line error (``stop``); every
other line is passed through unchanged.
"""
from __future__ import annotations

import os
import re
import sys
import threading

import mindspore.dataset as ds

_BAD_SAMPLE = re.compile(r"Detected an erroneous sample in MindData .*?The corresponding data file is: (.+?)\. (.*)$")
_PIPELINE_ABORT = re.compile(r"^\[ERROR\] MD\(.*\] InterruptMaster\] MindSpore dataset is terminated with err msg: "
                             r"Exception thrown from dataset pipeline")
_ABORT_DETAIL = re.compile(r"^(Line of code|File)\s*: ")


def apply_policy(policy: str) -> None:
    """Set MindSpore's error-samples mode for ``bad_images`` (before any pipeline starts)."""
    mode = ds.config.ErrorSamplesMode.REPLACE if policy == "skip" else ds.config.ErrorSamplesMode.RETURN
    ds.config.set_error_samples_mode(mode)


class NativeLogFilter:
    """Route fd 2 through a filter thread while active (a context manager). ``bad_files`` maps each bad
    file to its reason, in the order met; ``on_bad_file(path, reason)`` is called once per file."""

    def __init__(self, on_bad_file=None):
        self.on_bad_file = on_bad_file
        self.bad_files = {}
        self._lock = threading.Lock()
        self._saved = None
        self._thread = None
        self._skip_detail = False

    def __enter__(self):
        sys.stderr.flush()
        read_end, write_end = os.pipe()
        self._saved = os.dup(2)
        os.dup2(write_end, 2)
        os.close(write_end)
        self._thread = threading.Thread(target=self._pump, args=(read_end,), daemon=True, name="native-log")
        self._thread.start()
        return self

    def __exit__(self, *exc):
        sys.stderr.flush()
        os.dup2(self._saved, 2)  # closes the pipe's last write end: the thread sees EOF and ends
        self._thread.join(timeout=10)
        os.close(self._saved)
        return False

    def _pump(self, fd):
        with os.fdopen(fd, "rb", buffering=0) as pipe:
            pending = b""
            while True:
                chunk = pipe.read(65536)
                if not chunk:
                    break
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    self._handle(line + b"\n")
            if pending:
                self._handle(pending)

    def _handle(self, raw):
        text = raw.decode("utf-8", "replace").rstrip("\n")
        m = _BAD_SAMPLE.search(text)
        if m:
            path, reason = m.group(1), m.group(2).strip().rstrip(".")
            with self._lock:
                new = path not in self.bad_files
                if new:
                    self.bad_files[path] = reason
            if new and self.on_bad_file:
                self.on_bad_file(path, reason)
            return
        if _PIPELINE_ABORT.search(text):  # the error is reported by our own one line (errors.data_errors)
            self._skip_detail = True
            return
        if self._skip_detail and (_ABORT_DETAIL.search(text) or not text.strip()):
            return
        self._skip_detail = False
        self.write(raw)

    def write(self, raw):
        """Write to the real stderr (also used for our own warnings, so they keep their order)."""
        os.write(self._saved, raw if isinstance(raw, bytes) else raw.encode())

    def count(self):
        with self._lock:
            return len(self.bad_files)
