"""Convert a torchvision/timm ResNet ``.safetensors`` file into a checkpoint of this repository's network.

    python -m tools.convert_weights resnet50_tv.safetensors resnet50_tv.ckpt
    python train.py --pre_trained resnet50_tv.ckpt --filter_weight true --class_num 10 --optimizer Thor ...

Every parameter of the network (weights, BatchNorm statistics, classifier) must be found in the file with the
same shape, and every tensor of the file must be used (``num_batches_tracked`` is dropped). ``class_num`` is
taken from the file's ``fc`` layer. Any config key can follow (``--net_name resnet101``, ``--base_width 32``).
The output is written atomically and an existing file is never overwritten.
"""
import os
import sys

import mindspore as ms

from src import checkpoint, runtime
from src.config import parse_args
from src.convert import classifier_size, convert, read_safetensors
from src.errors import UserError, cli_main
from src.resnet import network_from_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@cli_main
def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) < 2 or argv[0].startswith("--") or argv[1].startswith("--"):
        raise UserError("usage: convert_weights.py SOURCE.safetensors OUTPUT.ckpt [--net_name resnet50 ...]")
    source, target, rest = argv[0], argv[1], argv[2:]
    if not target.endswith(".ckpt"):
        raise UserError(f"{target}: the output name must end with .ckpt")
    if os.path.exists(target):
        raise UserError(f"{target} already exists; remove it or choose another name")
    tensors = read_safetensors(source)
    classes = classifier_size(tensors)
    if classes is not None and not any(a.split("=")[0] == "--class_num" for a in rest):
        rest = ["--class_num", str(classes)] + rest
    cfg = parse_args(["--device_target", "CPU"] + rest)
    runtime.setup(cfg)
    network = network_from_config(cfg)
    params = convert(tensors, network, source)
    ms.load_param_into_net(network, {k: ms.Parameter(ms.Tensor(v), name=k) for k, v in params.items()},
                           strict_load=True)
    os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
    checkpoint.save(network, target, None, None, cfg)
    print(f"converted {len(params)} tensors of {source} into {target} ({cfg.net_name}, base_width "
          f"{cfg.base_width}, class_num {cfg.class_num})", flush=True)
    return target


if __name__ == "__main__":
    sys.exit(0 if main() is not None else 1)
