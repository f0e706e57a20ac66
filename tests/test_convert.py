"""Weight conversion from torchvision/timm-named safetensors files, and fine-tuning from the result."""
import json
import os

import numpy as np
import pytest
from conftest import TINY_ARGS, error_lines, run_script
from safetensors.numpy import save_file


def torchvision_resnet(blocks, bottleneck, width, classes, seed=0):
    """A state dict with torchvision's names and shapes (written out here independently of src/convert.py)."""
    rng = np.random.default_rng(seed)
    sd = {}

    def conv(name, o, i, k):
        sd[name + ".weight"] = rng.standard_normal((o, i, k, k)).astype(np.float32)

    def bn(name, c):
        sd[name + ".weight"] = rng.uniform(0.5, 1.5, c).astype(np.float32)
        sd[name + ".bias"] = rng.standard_normal(c).astype(np.float32)
        sd[name + ".running_mean"] = rng.standard_normal(c).astype(np.float32)
        sd[name + ".running_var"] = rng.uniform(0.5, 2.0, c).astype(np.float32)
        sd[name + ".num_batches_tracked"] = np.array(1234, np.int64)

    conv("conv1", width, 3, 7)
    bn("bn1", width)
    expansion = 4 if bottleneck else 1
    cin = width
    for s, n in enumerate(blocks):
        w = width * 2 ** s
        for b in range(n):
            p = f"layer{s + 1}.{b}."
            if bottleneck:
                conv(p + "conv1", w, cin, 1), bn(p + "bn1", w)
                conv(p + "conv2", w, w, 3), bn(p + "bn2", w)
                conv(p + "conv3", w * 4, w, 1), bn(p + "bn3", w * 4)
            else:
                conv(p + "conv1", w, cin, 3), bn(p + "bn1", w)
                conv(p + "conv2", w, w, 3), bn(p + "bn2", w)
            if b == 0 and (s > 0 or cin != w * expansion):
                conv(p + "downsample.0", w * expansion, cin, 1), bn(p + "downsample.1", w * expansion)
            cin = w * expansion
    sd["fc.weight"] = rng.standard_normal((classes, cin)).astype(np.float32)
    sd["fc.bias"] = rng.standard_normal(classes).astype(np.float32)
    return sd


EXPECTED_NAMES = {  # torchvision name -> ours, spelled out by hand
    "conv1.weight": "conv1.weight", "bn1.weight": "bn1.gamma", "bn1.bias": "bn1.beta",
    "bn1.running_mean": "bn1.moving_mean", "bn1.running_var": "bn1.moving_variance",
    "layer1.0.conv2.weight": "layer1.0.conv2.weight", "layer2.1.bn2.running_var": "layer2.1.bn2.moving_variance",
    "layer2.0.downsample.0.weight": "layer2.0.down_sample_layer.0.weight",
    "layer2.0.downsample.1.weight": "layer2.0.down_sample_layer.1.gamma",
    "layer4.0.downsample.1.running_mean": "layer4.0.down_sample_layer.1.moving_mean",
    "fc.weight": "end_point.weight", "fc.bias": "end_point.bias",
}


def test_resnet50_names_and_shapes_match_torchvision():
    """The mapping covers a full-width torchvision ResNet-50 exactly (shapes only: no file, no network run)."""

    from src.convert import convert
    from src.resnet import create_network
    sd = torchvision_resnet((3, 4, 6, 3), True, 64, 1000)
    assert sum(v.size for k, v in sd.items() if "running" not in k and "num_batches" not in k) == 25_557_032
    params = convert(sd, create_network("resnet50", 1000))
    assert len(params) == len([k for k in sd if "num_batches" not in k]) == 267  # 53 convs, 53 BNs x 4, fc x 2
    assert np.array_equal(params["layer3.5.bn3.moving_variance"], sd["layer3.5.bn3.running_var"])


def test_convert_round_trip_and_fine_tune(tmp_path, image_data):
    """torch-named safetensors (float32 and float16 tensors, a timm 'module.' prefix) -> our checkpoint,
    every value where it belongs; then fine-tune from it to another class count with filter_weight."""
    import mindspore as ms
    sd = torchvision_resnet((2, 2, 2, 2), False, 4, 5)
    sd["layer1.1.conv1.weight"] = sd["layer1.1.conv1.weight"].astype(np.float16)
    src = str(tmp_path / "tv.safetensors")
    save_file({"module." + k: v for k, v in sd.items()}, src)
    ckpt = str(tmp_path / "tv.ckpt")
    proc = run_script("-m", "tools.convert_weights", src, ckpt, "--net_name", "resnet18", "--base_width", "4")
    assert proc.returncode == 0, proc.stderr
    assert "class_num 5" in proc.stdout
    loaded = ms.load_checkpoint(ckpt)
    for theirs, ours in EXPECTED_NAMES.items():
        assert np.array_equal(loaded[ours].asnumpy(), sd[theirs]), theirs
    assert np.array_equal(loaded["layer1.1.conv1.weight"].asnumpy(), sd["layer1.1.conv1.weight"].astype(np.float32))
    assert loaded["class_num"].asnumpy().item() == 5 and "epoch_num" not in loaded
    n_ours = len([k for k in loaded if k not in ("net_name", "class_num", "config")])
    assert n_ours == len([k for k in sd if "num_batches" not in k])

    # the output is never overwritten
    again = run_script("-m", "tools.convert_weights", src, ckpt, "--net_name", "resnet18", "--base_width", "4")
    assert again.returncode == 2 and "already exists" in error_lines(again.stderr)[0]

    # a 5-class classifier into a 3-class run: refused without filter_weight, fine-tuned with it
    args = [*TINY_ARGS, "--data_path", os.path.join(image_data, "train"), "--epoch_size", "1",
            "--pre_trained", ckpt]
    refused = run_script("train.py", *args, "--output_dir", tmp_path / "a")
    assert refused.returncode == 2 and "--filter_weight true" in error_lines(refused.stderr)[0]
    out = tmp_path / "ft"
    tuned = run_script("train.py", *args, "--filter_weight", "true", "--output_dir", out)
    assert tuned.returncode == 0, tuned.stderr
    assert "initialised 100 parameters from" in tuned.stdout and "filter_weight" in tuned.stdout
    assert np.isfinite(last_json_line(out)["loss"])


def last_json_line(out):
    events = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))]
    return [e for e in events if e["event"] == "done"][0]


@pytest.mark.parametrize("damage, message", [
    ("extra", "tensor 'layer4.2.conv1.weight' has no place in the network"),
    ("foreign", "tensor 'head.proj.weight' is not part of a torchvision/timm ResNet"),
    ("missing", "no tensor for parameter 'layer3.1.bn2.moving_mean'"),
    ("shape", "has shape (8, 4, 3, 3), the network's 'layer1.0.conv1.weight' has (4, 4, 3, 3)"),
    ("truncated", "truncated"),
    ("garbage", "not a safetensors file"),
])
def test_convert_rejects_bad_files_with_one_line(tmp_path, damage, message):
    sd = torchvision_resnet((2, 2, 2, 2), False, 4, 3)
    src = str(tmp_path / "w.safetensors")
    if damage == "extra":
        sd["layer4.2.conv1.weight"] = sd["layer4.1.conv1.weight"]  # a third block: ResNet-18 has two
    elif damage == "foreign":
        sd["head.proj.weight"] = sd["fc.weight"]
    elif damage == "missing":
        del sd["layer3.1.bn2.running_mean"]
    elif damage == "shape":
        sd["layer1.0.conv1.weight"] = np.zeros((8, 4, 3, 3), np.float32)
    save_file(sd, src)
    if damage == "truncated":
        data = open(src, "rb").read()
        open(src, "wb").write(data[: len(data) // 2])
    elif damage == "garbage":
        open(src, "wb").write(b"\xff" * 64)
    out = str(tmp_path / "w.ckpt")
    proc = run_script("-m", "tools.convert_weights", src, out, "--net_name", "resnet18", "--base_width", "4")
    assert proc.returncode == 2
    errors = error_lines(proc.stderr)
    assert len(errors) == 1 and message in errors[0], proc.stderr
    assert not os.path.exists(out)


def test_bfloat16_tensors_are_read(tmp_path):
    """A bfloat16 tensor (written by hand: the top 16 bits of float32) reads back as float32."""
    from src.convert import read_safetensors
    values = np.array([1.0, -2.5, 3.140625, 0.0], np.float32)
    raw = (values.view(np.uint32) >> 16).astype("<u2").tobytes()
    header = json.dumps({"x": {"dtype": "BF16", "shape": [2, 2], "data_offsets": [0, len(raw)]}}).encode()
    path = tmp_path / "b.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header + raw)
    assert np.array_equal(read_safetensors(str(path))["x"], values.reshape(2, 2))
