"""Export a checkpoint for inference: MINDIR (MindSpore Lite, Ascend 310), AIR (Ascend only), ONNX.

    python export.py --checkpoint_path output/resnet50-90_450360.ckpt --file_format MINDIR
    python export.py --checkpoint_path CKPT --file_format ONNX --batch_size 1 --image_size 224 --file_name r50

Without ``--config_path`` the config.yaml saved by train.py beside the checkpoint is used. The input is
float32 NCHW ``(batch_size, 3, image_size, image_size)``, normalised with the ImageNet mean/std.
"""
import os
import sys

import numpy as np
import mindspore as ms

from src import runtime
from src.entry import config_for_checkpoint, load_network, pop_option
from src.errors import UserError, cli_main

FORMATS = {"MINDIR": ".mindir", "AIR": ".air", "ONNX": ".onnx"}


@cli_main
def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    ckpt_path, argv = pop_option(argv, "checkpoint_path", required=True)
    fmt, argv = pop_option(argv, "file_format", "MINDIR")
    fmt = fmt.upper()
    if fmt not in FORMATS:
        raise UserError(f"--file_format {fmt!r} is not one of {', '.join(FORMATS)}")
    batch, argv = pop_option(argv, "batch_size", "1")
    size, argv = pop_option(argv, "image_size", None)
    name, argv = pop_option(argv, "file_name", None)
    try:
        batch = int(batch)
        size = int(size) if size is not None else None
    except ValueError:
        raise UserError("--batch_size and --image_size expect integers") from None
    cfg = config_for_checkpoint(argv, ckpt_path)
    if fmt == "AIR" and cfg.device_target != "Ascend":
        raise UserError("--file_format AIR needs the Ascend backend (device_target Ascend); use MINDIR or ONNX here")
    runtime.setup(cfg)
    size = size or cfg.eval_image_size
    network = load_network(cfg, ckpt_path)
    name = name or os.path.splitext(os.path.basename(ckpt_path))[0]
    final = name if name.endswith(FORMATS[fmt]) else name + FORMATS[fmt]
    stem = final[: -len(FORMATS[fmt])]
    tmp_stem = os.path.join(os.path.dirname(os.path.abspath(stem)), f".tmp-{os.getpid()}-{os.path.basename(stem)}")
    dummy = ms.Tensor(np.zeros((batch, 3, size, size), np.float32))
    try:
        ms.export(network, dummy, file_name=tmp_stem, file_format=fmt)
        os.replace(tmp_stem + FORMATS[fmt], final)
    finally:
        if os.path.exists(tmp_stem + FORMATS[fmt]):
            os.remove(tmp_stem + FORMATS[fmt])
    print(f"exported {final} ({fmt}, input {batch}x3x{size}x{size})", flush=True)
    return final


if __name__ == "__main__":
    sys.exit(0 if main() is not None else 1)
