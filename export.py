"""Export a checkpoint for inference: MINDIR (MindSpore Lite, Ascend 310), AIR (Ascend only), ONNX.

    python export.py --checkpoint_path output/resnet50-90_450360.ckpt --file_format MINDIR
    python export.py --checkpoint_path CKPT --file_format ONNX --batch_size 1 --image_size 224 --file_name r50
    python export.py --checkpoint_path CKPT --file_format MINDIR --verify true   # re-load and compare outputs

Without ``--config_path`` the config.yaml saved by train.py beside the checkpoint is used. The input is
float32 NCHW ``(batch_size, 3, image_size, image_size)``, normalised with the ImageNet mean/std; the output
is the logits. The file is written under a temporary name and renamed when complete (and verified).
"""
import os
import sys

import mindspore as ms
import numpy as np
from mindspore import nn

from src import host, runtime
from src.entry import Option, config_for_checkpoint, load_network, parse_script_args
from src.errors import UserError, cli_main

FORMATS = {"MINDIR": ".mindir", "AIR": ".air", "ONNX": ".onnx"}


USAGE = ("export.py --checkpoint_path CKPT [--file_format MINDIR|AIR|ONNX] [--batch_size 1] [--image_size N] "
         "[--file_name NAME] [--verify true] [--config_path FILE] [--key value ...]")
OPTIONS = [
    Option("checkpoint_path", str, required=True, help="the checkpoint to export"),
    Option("file_format", str, "MINDIR", help="MINDIR | AIR (Ascend only) | ONNX"),
    Option("batch_size", int, 1, help="batch dimension of the exported input",
           check=(lambda v: v >= 1, "must be >= 1")),
    Option("image_size", int, None, help="input height and width (default: eval_image_size of the config)",
           check=(lambda v: v >= 8, "must be >= 8")),
    Option("file_name", str, None, help="output name, extension added (default: the checkpoint's name)"),
    Option("verify", bool, False, help="load the exported file back and compare its logits with the checkpoint's"),
]
TOLERANCE = 1e-4  # float32: max |exported - checkpoint| <= TOLERANCE * max(1, max |logit|)


def check_export(network, path, fmt, shape, seed):
    """Run the exported file and the checkpoint network on the same random batch and compare the logits.
    MINDIR is loaded back with mindspore.load + nn.GraphCell, ONNX with onnxruntime (when installed).

    The bound is 1e-4 absolute for logits up to 1 in magnitude and 1e-4 relative to the largest logit
    beyond that: another runtime sums in another order, and float32 rounding grows with the logits (a
    ResNet-50 with logits of 2,600 differs by 1.8e-3 in ONNX Runtime, 7e-7 of the scale). Prints the max
    absolute difference; a UserError when it is out of bounds."""
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    expected = network(ms.Tensor(x)).asnumpy()
    if fmt == "MINDIR":
        got = nn.GraphCell(ms.load(path))(ms.Tensor(x)).asnumpy()
    elif fmt == "ONNX":
        try:
            import onnxruntime
        except ImportError:
            print("verify ONNX: skipped, onnxruntime is not installed (pip install onnxruntime)", flush=True)
            return None
        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        got = session.run(None, {session.get_inputs()[0].name: x})[0]
    else:
        print(f"verify {fmt}: skipped, {fmt} files cannot be run on this backend", flush=True)
        return None
    if got.shape != expected.shape:
        raise UserError(f"verify {fmt}: output shape {got.shape}, the checkpoint network gives {expected.shape}")
    diff = float(np.max(np.abs(got.astype(np.float64) - expected)))
    scale = float(np.max(np.abs(expected)))
    bound = TOLERANCE * max(1.0, scale)
    print(f"verify {fmt}: max |exported - checkpoint| = {diff:.3g} on a random {shape[0]}x{shape[1]}x{shape[2]}x"
          f"{shape[3]} batch (max |logit| {scale:.3g}, bound {bound:.3g})", flush=True)
    if not diff <= bound:
        raise UserError(f"verify {fmt}: exported model differs from the checkpoint by {diff:.3g} "
                        f"(> {bound:.3g}); nothing written")
    return diff


@cli_main
def main(argv=None):
    opts, argv = parse_script_args(sys.argv[1:] if argv is None else argv, OPTIONS, USAGE, __doc__)
    ckpt_path, batch, size = opts.checkpoint_path, opts.batch_size, opts.image_size
    name, verify = opts.file_name, opts.verify
    fmt = opts.file_format.upper()
    if fmt not in FORMATS:
        raise UserError(f"command line: --file_format {fmt!r} is not one of {', '.join(FORMATS)}")
    if not os.path.isfile(ckpt_path):
        raise UserError(f"checkpoint not found: {ckpt_path}")
    cfg = config_for_checkpoint(argv, ckpt_path)
    if fmt == "AIR" and cfg.device_target != "Ascend":
        raise UserError("--file_format AIR needs the Ascend backend (device_target Ascend); use MINDIR or ONNX here")
    runtime.setup(cfg)
    for note in runtime.notes():
        print(note, flush=True)
    size = size or cfg.eval_image_size
    network = load_network(cfg, ckpt_path)
    name = name or os.path.splitext(os.path.basename(ckpt_path))[0]
    final = name if name.endswith(FORMATS[fmt]) else name + FORMATS[fmt]
    stem = final[: -len(FORMATS[fmt])]
    tmp_stem = os.path.join(os.path.dirname(os.path.abspath(stem)), f".tmp-{os.getpid()}-{os.path.basename(stem)}")
    dummy = ms.Tensor(np.zeros((batch, 3, size, size), np.float32))
    try:
        ms.export(network, dummy, file_name=tmp_stem, file_format=fmt)
        if verify:  # before the rename: a file that fails never appears under its final name
            check_export(network, tmp_stem + FORMATS[fmt], fmt, (batch, 3, size, size), cfg.seed)
        os.replace(tmp_stem + FORMATS[fmt], final)
    finally:
        if os.path.exists(tmp_stem + FORMATS[fmt]):
            os.remove(tmp_stem + FORMATS[fmt])
    peak = host.memory_mib("VmHWM")
    print(f"exported {final} ({fmt}, input {batch}x3x{size}x{size}"
          + (f", peak RSS {peak:.0f} MiB)" if peak is not None else ")"), flush=True)
    return final


if __name__ == "__main__":
    sys.exit(0 if main() is not None else 1)
