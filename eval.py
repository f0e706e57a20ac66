"""Evaluate checkpoints: top-1/top-5 over every image of a validation folder.

    python eval.py --checkpoint_path output/resnet50-90_450360.ckpt --data_path /data/imagenet/val
    python eval.py --checkpoint_path output/            # every checkpoint in the folder, in step order

Without ``--config_path`` the config.yaml saved by train.py beside the checkpoint is used. Without
``--data_path`` the synthetic validation set is used. The last line printed is JSON:
``{"top1": ..., "top5": ..., "images": N, "checkpoint": ...}`` (for a folder: the best checkpoint).
"""
import glob
import json
import os
import sys

from src import checkpoint, runtime
from src.dataset import dataset_from_config
from src.entry import Option, config_for_checkpoint, parse_script_args
from src.errors import UserError, cli_main, data_errors
from src.evaluate import LogitsCell, evaluate
from src.resnet import network_from_config

USAGE = "eval.py --checkpoint_path CKPT_OR_DIR [--data_path VAL_DIR] [--config_path FILE] [--key value ...]"
OPTIONS = [
    Option("checkpoint_path", str, required=True, help="a checkpoint, or a folder: every .ckpt in step order"),
    Option("data_path", str, help="validation folder (ImageNet layout); default: eval_dataset_path, a 'val' "
                                  "folder beside the training data, or synthetic data"),
]


def checkpoints_in(path):
    if os.path.isdir(path):
        files = [f for f in glob.glob(os.path.join(path, "*.ckpt")) if not os.path.basename(f).startswith(".")]
        if not files:
            raise UserError(f"{path}: no .ckpt files in this folder")
        return sorted(files, key=lambda f: (checkpoint.step_of(f) < 0, checkpoint.step_of(f), f))
    if not os.path.exists(path):
        raise UserError(f"checkpoint not found: {path}")
    return [path]


@cli_main
def main(argv=None):
    opts, argv = parse_script_args(sys.argv[1:] if argv is None else argv, OPTIONS, USAGE, __doc__)
    ckpt_path, data_path = opts.checkpoint_path, opts.data_path  # data_path: the validation folder (zoo style)
    files = checkpoints_in(ckpt_path)
    cfg = config_for_checkpoint(argv, ckpt_path)
    rank, group = runtime.setup(cfg)  # with --run_distribute true under msrun: one shard per rank
    say = print if rank == 0 else (lambda *a, **k: None)
    for note in runtime.notes():
        say(note, flush=True)
    network = network_from_config(cfg)
    checkpoint.load_into(network, checkpoint.read(files[0]), files[0])  # fail fast on a mismatch
    # No --data_path: eval_dataset_path, a 'val' folder beside the training data, or synthetic data.
    dataset, _ = dataset_from_config(cfg, train=False, rank=rank, group_size=group, path=data_path, warn=say)
    results = []
    cell = LogitsCell(network)  # compiled once, reloaded for each checkpoint
    for i, path in enumerate(files):
        if i:  # files[0] is already loaded
            checkpoint.load_into(network, checkpoint.read(path), path)
        with data_errors():
            res = evaluate(cell, dataset, distributed=group > 1)
        res["checkpoint"] = path
        results.append(res)
        say(f"{path}: top1 {res['top1']:.4f} top5 {res['top5']:.4f} images {res['images']} "
            f"({res['images'] / max(res['seconds'], 1e-9):.1f} img/s)", flush=True)
    best = max(results, key=lambda r: r["top1"])
    if len(results) > 1:
        say(f"best: {best['checkpoint']} (top1 {best['top1']:.4f})", flush=True)
    say(json.dumps({"top1": best["top1"], "top5": best["top5"], "images": best["images"],
                    "checkpoint": best["checkpoint"]}), flush=True)
    return best


if __name__ == "__main__":
    sys.exit(0 if main() is not None else 1)
