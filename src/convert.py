"""PyTorch (torchvision / timm) ResNet weights -> this repository's network.

torchvision and timm name a ResNet's tensors the same way (``conv1.weight``, ``bn1.running_mean``,
``layer1.0.downsample.0.weight``, ``fc.weight``); this network uses the MindSpore model zoo's names
(``bn1.moving_mean``, ``layer1.0.down_sample_layer.0.weight``, ``end_point.weight``). Convolution
weights are OIHW and Dense weights (out, in) in both frameworks, so tensors are copied as they are.

The ``.safetensors`` reader here is a small one of our own (8-byte little-endian header length, a JSON
header, raw little-endian data), so that float16 and bfloat16 files load into float32 without extra
packages.
"""
from __future__ import annotations

import json
import os
import re
from typing import TYPE_CHECKING

import numpy as np

from src.errors import UserError

if TYPE_CHECKING:
    from mindspore import nn


_BN = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_variance"}
_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32,
           "BF16": None}
# timm checkpoints sometimes carry these wrappers' prefixes; stripped when every key has the same one.
_PREFIXES = ("module.", "model.", "backbone.")


def read_safetensors(path: str) -> dict[str, np.ndarray]:
    """Read a ``.safetensors`` file into ``{name: float32/int ndarray}``; a UserError for a bad file."""
    if not os.path.isfile(path):
        raise UserError(f"weights file not found: {path}")
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if n <= 0 or 8 + n > size:
            raise UserError(f"{path}: not a safetensors file (bad header length)")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise UserError(f"{path}: not a safetensors file (header is not JSON)") from None
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise UserError(f"{path}: tensor {name!r} has a malformed header entry") from None
        if dtype not in _DTYPES:
            raise UserError(f"{path}: tensor {name!r} has unsupported dtype {dtype}")
        if not 0 <= begin <= end <= len(data):
            raise UserError(f"{path}: tensor {name!r} lies outside the file (truncated?)")
        raw = data[begin:end]
        count = int(np.prod(shape, dtype=np.int64))
        if dtype == "BF16":  # the upper 16 bits of a float32
            if len(raw) != 2 * count:
                raise UserError(f"{path}: tensor {name!r} has {len(raw)} bytes for shape {shape}")
            array = (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            item = np.dtype(_DTYPES[dtype]).newbyteorder("<")
            if len(raw) != item.itemsize * count:
                raise UserError(f"{path}: tensor {name!r} has {len(raw)} bytes for shape {shape}")
            array = np.frombuffer(raw, item)
            if array.dtype.kind == "f":
                array = array.astype(np.float32)
        out[name] = array.reshape(shape)
    if not out:
        raise UserError(f"{path}: holds no tensors")
    return out


def torch_to_ours(name: str) -> str | None:
    """Our parameter name for a torchvision/timm ResNet tensor name, or None for tensors we do not keep
    (``num_batches_tracked``). Raises a UserError for a name that is not part of a ResNet."""
    parts = name.split(".")
    if parts[-1] == "num_batches_tracked":
        return None
    if name in ("fc.weight", "fc.bias"):
        return "end_point." + parts[-1]
    m = re.fullmatch(r"(layer[1-4]\.\d+\.)?(conv[123]|bn[123]|downsample\.[01])\.(\w+)", name)
    if not m:
        raise UserError(f"tensor {name!r} is not part of a torchvision/timm ResNet")
    block, module, leaf = m.group(1) or "", m.group(2), m.group(3)
    is_bn = module.startswith("bn") or module == "downsample.1"
    if module.startswith("downsample"):
        module = "down_sample_layer." + module.split(".")[1]
    if is_bn:
        if leaf not in _BN:
            raise UserError(f"tensor {name!r}: unknown BatchNorm entry {leaf!r}")
        leaf = _BN[leaf]
    elif leaf != "weight":
        raise UserError(f"tensor {name!r}: convolutions of a ResNet have no {leaf!r}")
    return block + module + "." + leaf


def strip_prefix(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Drop a wrapper prefix (``module.``, ``model.``, ``backbone.``) shared by every key."""
    for prefix in _PREFIXES:
        if tensors and all(k.startswith(prefix) for k in tensors):
            return {k[len(prefix):]: v for k, v in tensors.items()}
    return tensors


def convert(tensors: dict[str, np.ndarray], network: nn.Cell, source: str = "weights") -> dict:
    """Map torch-named ``tensors`` onto ``network``'s parameters. Every parameter of the network must
    be found with the same shape and every source tensor must be used (except ``num_batches_tracked``).
    Returns ``{our_name: float32 ndarray}``; raises a UserError naming the first problem."""
    tensors = strip_prefix(tensors)
    mapped = {}
    for name, value in tensors.items():
        try:
            ours = torch_to_ours(name)
        except UserError as exc:
            raise UserError(f"{source}: {exc}") from None
        if ours is not None:
            mapped[ours] = (name, value)
    wanted = {p.name: tuple(p.shape) for p in network.get_parameters()}
    extra = sorted(set(mapped) - set(wanted))
    if extra:
        raise UserError(f"{source}: tensor {mapped[extra[0]][0]!r} has no place in the network (another depth? "
                        f"check net_name)")
    out = {}
    for ours, shape in wanted.items():
        if ours not in mapped:
            raise UserError(f"{source}: no tensor for parameter '{ours}' (another depth or a truncated file?)")
        name, value = mapped[ours]
        if tuple(value.shape) != shape:
            raise UserError(f"{source}: tensor {name!r} has shape {tuple(value.shape)}, the network's '{ours}' "
                            f"has {shape} (check net_name and base_width)")
        out[ours] = np.ascontiguousarray(value, dtype=np.float32)
    return out


def classifier_size(tensors: dict[str, np.ndarray]) -> int | None:
    """Number of classes of the ``fc`` layer in torch-named ``tensors`` (None when there is none)."""
    fc = strip_prefix(tensors).get("fc.weight")
    return None if fc is None else int(fc.shape[0])
