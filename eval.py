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
from src.entry import config_for_checkpoint, pop_option
from src.errors import UserError, cli_main, data_errors
from src.evaluate import LogitsCell, evaluate
from src.resnet import network_from_config


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
    argv = list(sys.argv[1:] if argv is None else argv)
    ckpt_path, argv = pop_option(argv, "checkpoint_path", required=True)
    data_path, argv = pop_option(argv, "data_path")  # the validation folder (the zoo's convention)
    files = checkpoints_in(ckpt_path)
    cfg = config_for_checkpoint(argv, ckpt_path)
    rank, group = runtime.setup(cfg)  # with --run_distribute true under msrun: one shard per rank
    say = print if rank == 0 else (lambda *a, **k: None)
    network = network_from_config(cfg)
    checkpoint.load_into(network, checkpoint.read(files[0]), files[0])  # fail fast on a mismatch
    # No --data_path: eval_dataset_path, a 'val' folder beside the training data, or synthetic data.
    dataset, _ = dataset_from_config(cfg, train=False, rank=rank, group_size=group, path=data_path)
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
