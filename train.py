"""Train ResNet on ImageNet-layout folders (or synthetic data) with Momentum or THOR.

    python train.py --config_path config/resnet50_cpu_smoke.yaml
    python train.py --data_path /data/imagenet/train --eval_dataset_path /data/imagenet/val --run_eval true

Every key of default_config.yaml can be given as ``--key value``; ``python train.py --help`` lists them.
"""
import json
import os
import shutil
import sys

from mindspore import Model

from src import checkpoint, runtime
from src.callbacks import CheckpointSaver, EvalCallback, MetricsFile, TrainMonitor
from src.config import parse_args, save_config
from src.datafaults import NativeLogFilter, apply_policy
from src.dataset import dataset_from_config
from src.errors import UserError, cli_main, data_errors
from src.evaluate import LogitsCell, evaluate
from src.logger import Logger
from src.optim import NetWithLoss, apply_amp, create_loss, create_optimizer, create_train_cell
from src.resnet import network_from_config
from src.resume import find_resume, restore, schedule_position
from src.schedules import lr_batch_scaling, lr_from_config


def prepare_output(cfg, rank):
    """Create ``output_dir``, check it is writable, refuse to mix with another run's checkpoints."""
    out = os.path.abspath(cfg.output_dir)
    try:
        os.makedirs(out, exist_ok=True)
        probe = os.path.join(out, f".write-test-{os.getpid()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as exc:
        raise UserError(f"output_dir {out} is not writable ({exc.strerror})") from None
    if rank == 0 and not cfg.resume_ckpt and checkpoint.list_checkpoints(out, cfg.net_name):
        raise UserError(f"output_dir {out} already holds checkpoints of an earlier run; resume with "
                        f"--resume_ckpt auto (or FILE), or choose another --output_dir")
    return out


def check_free_space(folder, cell, keep):
    """Stop before training when the output disk cannot hold the checkpoints this run will keep (each one
    is written beside the previous before it is rotated out, so keep + 1 of them, and the best one)."""
    need = sum(p.size * p.itemsize for p in cell.get_parameters() if hasattr(p, "itemsize")) * (keep + 2)
    free = shutil.disk_usage(folder).free
    if free < need:
        raise UserError(f"output_dir {folder}: {free / 2**20:.0f} MiB free, but {keep} checkpoints of this run need "
                        f"about {need / 2**20:.0f} MiB; free space, lower keep_checkpoint_max, or choose another "
                        f"--output_dir")
    return need


def load_pretrained(network, cfg, log):
    """Initialise ``network`` from ``cfg.pre_trained`` (weights only). With ``filter_weight`` the classifier
    is not loaded (fine-tuning to another ``class_num``); without it a classifier of another size is an error."""
    params = checkpoint.read(cfg.pre_trained)
    head = "end_point."
    theirs = params.get(head + "weight")
    if theirs is not None and not cfg.filter_weight and tuple(theirs.shape)[0] != cfg.class_num:
        raise UserError(f"{cfg.pre_trained}: classifier has {tuple(theirs.shape)[0]} classes, class_num is "
                        f"{cfg.class_num}; add --filter_weight true to fine-tune with a new classifier")
    loaded = checkpoint.load_into(network, params, cfg.pre_trained, skip=(head,) if cfg.filter_weight else ())
    log(f"initialised {len(loaded)} parameters from {cfg.pre_trained}"
        + (" (classifier left at its initial value: filter_weight)" if cfg.filter_weight else ""))


def start_run(cfg):
    """Runtime, output folder, logger, saved config; ``(rank, group, out, log)``."""
    rank, group = runtime.setup(cfg)
    out = prepare_output(cfg, rank)
    log = Logger(out, rank, group, "train")
    for note in runtime.notes():
        log(note)
    if group > 1:
        log.everywhere(f"rank {rank} of {group}: pid {os.getpid()}")  # lets the launcher name a dead rank
    if rank == 0:
        save_config(cfg, os.path.join(out, "config.yaml"))
        for path in checkpoint.remove_stale_temporaries(out):
            log.warning(f"removed {path}, a checkpoint that a killed run did not finish writing")
    return rank, group, out, log


def build_data(cfg, rank, group, out, log):
    """Training (this rank's shard) and validation datasets; the class order is saved beside the outputs."""
    apply_policy(cfg.bad_images)
    train_ds, classes = dataset_from_config(cfg, train=True, rank=rank, group_size=group, warn=log.warning)
    eval_ds = dataset_from_config(cfg, train=False, rank=0, group_size=1, warn=log.warning)[0] if cfg.run_eval else None
    if rank == 0:
        with open(os.path.join(out, "class_indexing.json"), "w", encoding="utf-8") as f:
            json.dump({name: i for i, name in enumerate(classes)}, f, indent=1)
    return train_ds, eval_ds


def build_callbacks(cfg, run, train_cell, network, eval_ds, lr, state_at, steps_per_epoch):
    """Progress monitor, checkpoints (rank 0, or every rank with checkpoint_all_ranks) and evaluation (rank 0)."""
    rank, group, out, log, metrics = run
    monitor = TrainMonitor(cfg, lr, steps_per_epoch, cfg.batch_size * group, metrics, log, extra=train_cell.log_fields)
    callbacks = [monitor]
    ckpt_dir = out if rank == 0 else None
    if group > 1 and cfg.checkpoint_all_ranks:
        ckpt_dir = os.path.join(out, f"rank_{rank}")
        os.makedirs(ckpt_dir, exist_ok=True)
    if cfg.save_checkpoint and ckpt_dir:
        check_free_space(ckpt_dir, train_cell, cfg.keep_checkpoint_max)
        callbacks.append(CheckpointSaver(cfg, train_cell, ckpt_dir, steps_per_epoch, log, meta_at=state_at))
    evaluator = None
    if cfg.run_eval and rank == 0:
        eval_cell = LogitsCell(network)
        evaluator = EvalCallback(cfg, lambda: evaluate(eval_cell, eval_ds, network), train_cell, out, steps_per_epoch,
                                 metrics, log, meta_at=state_at)
        callbacks.append(evaluator)
    return callbacks, monitor, evaluator


def summarize(cfg, steps_per_epoch, monitor, evaluator, skipped):
    summary = {"epochs": cfg.epoch_size, "steps": cfg.epoch_size * steps_per_epoch,
               "loss": monitor.history[-1]["loss"] if monitor.history else None,
               "img_per_s": monitor.history[-1]["img_per_s"] if monitor.history else None,
               "overflow_steps": monitor.overflows, "bad_images_skipped": skipped}
    if evaluator and evaluator.results:
        last = evaluator.results[-1]
        summary.update(top1=last["top1"], top5=last["top5"], images=last["images"],
                       best_top1=evaluator.best["top1"], best_epoch=evaluator.best["epoch"])
    return summary


@cli_main
def main(argv=None):
    cfg = parse_args(argv)
    rank, group, out, log = start_run(cfg)
    resume_path, params = find_resume(cfg, out, log)
    train_ds, eval_ds = build_data(cfg, rank, group, out, log)
    steps_per_epoch = train_ds.get_dataset_size()

    network = network_from_config(cfg)
    if cfg.pre_trained:
        load_pretrained(network, cfg, log)
    factor, note = lr_batch_scaling(cfg.lr_batch_size, cfg.batch_size * group, cfg.lr_scaling)
    if note:
        (log if factor != 1.0 else log.warning)(note)
    lr = lr_from_config(cfg, steps_per_epoch, factor)
    optimizer = create_optimizer(cfg, network, lr)
    train_cell = create_train_cell(cfg, NetWithLoss(apply_amp(network, cfg.amp_level), create_loss(cfg)), optimizer,
                                   steps_per_epoch, warn=log.warning)
    state_at = schedule_position(lr, optimizer)
    initial_epoch = 0
    if resume_path:
        initial_epoch = restore(cfg, train_cell, params, resume_path, steps_per_epoch, state_at, train_ds, log)

    n_params = sum(p.size for p in network.trainable_params())
    log(f"{cfg.net_name} ({n_params:,} parameters), {cfg.optimizer}, {cfg.device_target}, "
        f"{'synthetic data' if not cfg.data_path else cfg.data_path}: {steps_per_epoch} steps/epoch x "
        f"{cfg.epoch_size} epochs, batch {cfg.batch_size} x {group} device(s); output in {out}")
    described = train_cell.describe()
    if described:
        log(described)
    metrics = MetricsFile(os.path.join(out, "metrics.jsonl"), enabled=rank == 0)
    metrics.write(event="start", epoch=initial_epoch, steps_per_epoch=steps_per_epoch)  # wall-clock counts compiling
    callbacks, monitor, evaluator = build_callbacks(cfg, (rank, group, out, log, metrics), train_cell, network,
                                                    eval_ds, lr, state_at, steps_per_epoch)

    native = NativeLogFilter(lambda path, reason: log.warning(f"skipped unreadable image {path} ({reason})",
                                                              write=native.write))
    with data_errors(), native:
        Model(train_cell).train(cfg.epoch_size, train_ds, callbacks=callbacks,
                                dataset_sink_mode=cfg.dataset_sink_mode, initial_epoch=initial_epoch)

    summary = summarize(cfg, steps_per_epoch, monitor, evaluator, native.count())
    log("training finished: " + json.dumps(summary))
    metrics.write(event="done", **summary)
    return summary


if __name__ == "__main__":
    sys.exit(0 if main() is not None else 1)
