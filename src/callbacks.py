"""Training callbacks: progress lines, per-epoch summaries, metrics file, checkpoints, evaluation."""
import json
import math
import os
import time

import numpy as np
from mindspore.train.callback import Callback

from src import checkpoint, host
from src.errors import UserError


class MetricsFile:
    """Append-only JSON-lines file (one object per event); only rank 0 writes one."""

    def __init__(self, path, enabled=True):
        self.path = path
        self.enabled = enabled

    def write(self, **record):
        if not self.enabled:
            return
        record.setdefault("time", round(time.time(), 3))
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


def _fmt_eta(seconds):
    seconds = int(max(seconds, 0))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h:d}:{m:02d}:{s:02d}"


class TrainMonitor(Callback):
    """Prints ``epoch/step, loss, lr, ms/step, img/s, ETA`` every ``log_interval`` steps and a summary per
    epoch; records both in the metrics file. img/s counts images of all devices. A non-finite loss stops
    training with a message naming the step; a step with non-finite gradients (loss-scale overflow) is
    skipped by the train step and counted here, and ``overflow_stop`` of them in a row stop training."""

    def __init__(self, cfg, lr, steps_per_epoch, global_batch, metrics, log=print, extra=None):
        super().__init__()
        self.overflow_stop = cfg.overflow_stop_steps  # stop after this many overflow steps in a row (0 = never)
        self.overflow_run = 0
        self.lr = lr
        self.spe = steps_per_epoch
        self.total_epochs = cfg.epoch_size
        self.global_batch = global_batch
        self.log_interval = cfg.log_interval
        self.metrics = metrics
        self.log = log
        self.extra = extra  # optional callable returning a dict of extra fields (e.g. THOR damping)
        self.overflows = 0
        self.history = []

    def on_train_epoch_begin(self, run_context):
        self.epoch_start = time.time()
        self.window_start = time.time()
        self.window_steps = 0
        self.losses = []
        self.epoch_overflows = 0
        self.step_in_epoch = 0

    def on_train_step_end(self, run_context):
        cb = run_context.original_args()
        outputs = cb.net_outputs
        loss = float(np.asarray(outputs[0].asnumpy() if hasattr(outputs[0], "asnumpy") else outputs[0]))
        overflow = bool(outputs[1].asnumpy()) if isinstance(outputs, (tuple, list)) and len(outputs) > 1 else False
        epoch = cb.cur_epoch_num  # 1-based, counts resumed epochs (cur_step_num restarts on resume)
        self.step_in_epoch += 1
        step_in_epoch = self.step_in_epoch
        step = (epoch - 1) * self.spe + step_in_epoch  # global, 1-based
        self.window_steps += 1
        if not math.isfinite(loss):  # the forward loss itself: no loss scale can fix this
            run_context.request_stop()
            raise UserError(f"loss is {loss} at epoch {epoch} step {step_in_epoch} (global step {step}); "
                            f"training stopped, the last checkpoint is kept (try a lower lr_max)")
        if overflow:
            self.overflows += 1
            self.epoch_overflows += 1
            self.overflow_run += 1
            if self.overflow_stop and self.overflow_run >= self.overflow_stop:
                run_context.request_stop()
                raise UserError(f"gradients were non-finite in {self.overflow_run} steps in a row (up to global step "
                                f"{step}, loss {loss:.4g}); training stopped, the last checkpoint is kept (lower "
                                f"loss_scale or use loss_scale_mode dynamic, or lower lr_max)")
        else:
            self.overflow_run = 0
            self.losses.append(loss)
        if step_in_epoch % self.log_interval == 0 or step_in_epoch == self.spe:
            now = time.time()
            dt = (now - self.window_start) / max(self.window_steps, 1)
            ips = self.global_batch / dt if dt > 0 else 0.0
            lr = float(self.lr[min(step - 1, len(self.lr) - 1)])
            remaining = (self.total_epochs * self.spe - step) * dt
            extra = self.extra() if self.extra else {}
            extra_txt = "".join(f" {k} {v:.5g}" if isinstance(v, float) else f" {k} {v}" for k, v in extra.items())
            self.log(f"epoch {epoch}/{self.total_epochs} step {step_in_epoch}/{self.spe} loss {loss:.4f} "
                     f"lr {lr:.6f}{extra_txt} {dt * 1000:.1f} ms/step {ips:.1f} img/s eta {_fmt_eta(remaining)}"
                     + (" (overflow: step skipped)" if overflow else ""))
            self.metrics.write(event="step", epoch=epoch, step=step, loss=loss, lr=lr, ms_per_step=dt * 1000,
                               img_per_s=ips, overflow=overflow, **extra)
            self.window_start = now
            self.window_steps = 0

    def on_train_epoch_end(self, run_context):
        cb = run_context.original_args()
        seconds = time.time() - self.epoch_start
        mean_loss = float(np.mean(self.losses)) if self.losses else float("nan")
        steps = len(self.losses) + self.epoch_overflows
        ips = steps * self.global_batch / seconds if seconds > 0 else 0.0
        peak = host.memory_mib("VmHWM")
        record = {"epoch": cb.cur_epoch_num, "step": cb.cur_epoch_num * self.spe, "loss": mean_loss,
                  "seconds": seconds, "img_per_s": ips, "overflow_steps": self.epoch_overflows, "peak_rss_mib": peak}
        self.history.append(record)
        self.log(f"epoch {cb.cur_epoch_num} done: mean loss {mean_loss:.4f}, {seconds:.1f} s, {ips:.1f} img/s"
                 + (f", peak RSS {peak:.0f} MiB" if peak is not None else "")
                 + (f", {self.epoch_overflows} overflow steps skipped" if self.epoch_overflows else ""))
        self.metrics.write(event="epoch", **record)


class CheckpointSaver(Callback):
    """Every ``save_checkpoint_epochs`` epochs and after the last one: ``<net_name>-<epoch>_<step>.ckpt`` written
    atomically, keeping the newest ``keep_checkpoint_max``."""

    def __init__(self, cfg, cell, folder, steps_per_epoch, log=print, meta_at=None):
        super().__init__()
        self.meta_at = meta_at or (lambda step: {})  # extra metadata for the state at a global step
        self.spe = steps_per_epoch
        self.cell = cell
        self.folder = folder
        self.prefix = cfg.net_name
        self.every = cfg.save_checkpoint_epochs
        self.keep_max = cfg.keep_checkpoint_max
        self.total_epochs = cfg.epoch_size
        self.cfg = cfg
        self.log = log

    def on_train_epoch_end(self, run_context):
        cb = run_context.original_args()
        epoch = cb.cur_epoch_num
        if epoch % self.every and epoch != self.total_epochs:
            return
        step = epoch * self.spe
        path = os.path.join(self.folder, f"{self.prefix}-{epoch}_{step}.ckpt")
        checkpoint.save(self.cell, path, epoch, step, self.cfg, self.meta_at(step))
        self.log(f"saved checkpoint {path}")
        old = checkpoint.list_checkpoints(self.folder, self.prefix)
        for stale in old[:-self.keep_max] if len(old) > self.keep_max else []:
            os.remove(stale)


class EvalCallback(Callback):
    """Every ``eval_interval`` epochs and after the last one: top-1/top-5 on the validation set, logged and
    recorded; with ``save_checkpoint`` the best top-1 so far is saved as ``<net_name>-best.ckpt``."""

    def __init__(self, cfg, eval_fn, cell, folder, steps_per_epoch, metrics, log=print, meta_at=None):
        super().__init__()
        self.meta_at = meta_at or (lambda step: {})
        self.spe = steps_per_epoch
        self.eval_fn = eval_fn
        self.interval = cfg.eval_interval
        self.total_epochs = cfg.epoch_size
        self.cell = cell
        self.folder = folder
        self.prefix = cfg.net_name
        self.cfg = cfg
        self.metrics = metrics
        self.log = log
        self.save_best = cfg.save_checkpoint
        self.best = None
        self.results = []

    def on_train_epoch_end(self, run_context):
        cb = run_context.original_args()
        epoch = cb.cur_epoch_num
        if epoch % self.interval and epoch != self.total_epochs:
            return
        res = self.eval_fn()
        res["epoch"] = epoch
        self.results.append(res)
        improved = self.best is None or res["top1"] > self.best["top1"]
        if improved:
            self.best = res
        self.log(f"eval epoch {epoch}: top1 {res['top1']:.4f} top5 {res['top5']:.4f} loss {res['loss']:.4f} "
                 f"({res['images']} images, {res['seconds']:.1f} s)"
                 + (" best" if improved else f" (best {self.best['top1']:.4f} at epoch {self.best['epoch']})"))
        self.metrics.write(event="eval", epoch=epoch, step=epoch * self.spe, top1=res["top1"], top5=res["top5"],
                           loss=res["loss"], images=res["images"], best=improved)
        if improved and self.save_best:
            path = os.path.join(self.folder, f"{self.prefix}-best.ckpt")
            checkpoint.save(self.cell, path, epoch, epoch * self.spe, self.cfg, self.meta_at(epoch * self.spe))
