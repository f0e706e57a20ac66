"""Classify image files with a trained checkpoint: the top-k class names and probabilities per image.

    python predict.py cat.jpg dog.png --checkpoint_path output/resnet50-90_450360.ckpt
    python predict.py photos/ --checkpoint_path CKPT --top_k 3 --json true

Images are given first (files, or folders searched recursively for .jpeg/.jpg/.png/.bmp). JPEG, PNG and BMP in
RGB, grayscale, palette, CMYK or with an alpha channel (dropped, as in training) are read, then preprocessed as
in evaluation (resize, center crop, normalise). Class names come from the class_indexing.json that train.py
saved beside the checkpoint, or ``--class_map FILE``. Without ``--config_path`` the config.yaml beside the
checkpoint is used. With ``--json true`` each image is one JSON line. An unreadable image is reported by
name; the others are still classified and the exit status is 2.
"""
import json
import sys

import mindspore as ms
import numpy as np

from src import runtime
from src.entry import Option, config_for_checkpoint, load_network, parse_script_args, print_script_help, wants_help
from src.errors import UserError, cli_main
from src.inference import class_names, find_images, preprocess, read_rgb, top_k

USAGE = "predict.py IMAGE_OR_DIR [...] --checkpoint_path CKPT [--top_k 5] [--json true] [--class_map FILE]"
OPTIONS = [
    Option("checkpoint_path", str, required=True, help="the checkpoint to classify with"),
    Option("class_map", str, None, help="class_indexing.json (default: the one beside the checkpoint)"),
    Option("top_k", int, 5, help="classes printed per image", check=(lambda v: v >= 1, "must be >= 1")),
    Option("json", bool, False, help="one JSON line per image"),
]
BATCH = 16  # images per forward pass (the last batch is padded, so one graph serves every call)


@cli_main
def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if wants_help(argv):
        print_script_help(USAGE, OPTIONS, __doc__)
        sys.exit(0)
    first_option = next((i for i, a in enumerate(argv) if a.startswith("-")), len(argv))
    inputs, argv = argv[:first_option], argv[first_option:]
    if not inputs:
        raise UserError(f"command line: no image given (usage: {USAGE})")
    opts, argv = parse_script_args(argv, OPTIONS, USAGE)
    ckpt_path, map_path, as_json = opts.checkpoint_path, opts.class_map, opts.json
    files = find_images(inputs)
    cfg = config_for_checkpoint(argv, ckpt_path)
    names, _ = class_names(cfg.class_num, ckpt_path, map_path)
    k = min(opts.top_k, cfg.class_num)
    runtime.setup(cfg)
    for note in runtime.notes():  # stderr: stdout carries the results (one JSON line per image with --json)
        print(note, file=sys.stderr, flush=True)
    network = load_network(cfg, ckpt_path)

    images, bad = [], []
    for path in files:
        try:
            images.append((path, preprocess(read_rgb(path), cfg.eval_image_size, cfg.eval_crop_ratio, cfg.dataset)))
        except ValueError as exc:
            bad.append(path)
            print(f"error: {path}: cannot be read as an image ({exc})", file=sys.stderr, flush=True)
    results = []
    for start in range(0, len(images), BATCH):
        chunk = images[start:start + BATCH]
        batch = np.zeros((BATCH,) + chunk[0][1].shape, np.float32)
        batch[:len(chunk)] = np.stack([x for _, x in chunk])
        logits = network(ms.Tensor(batch)).asnumpy()
        for (path, _), row in zip(chunk, logits):
            best = top_k(row, names, k)
            results.append({"image": path, "top": [{"class": n, "index": i, "prob": round(p, 6)} for n, i, p in best]})
            if as_json:
                print(json.dumps(results[-1]), flush=True)
            else:
                print(f"{path}: " + ", ".join(f"{n} {p:.4f}" for n, _, p in best), flush=True)
    if bad:  # the per-file lines above named them; exit non-zero so scripts notice
        sys.exit(2)
    return results


if __name__ == "__main__":
    sys.exit(0 if main() is not None else 1)
