"""Export with verification, and predict.py on the image kinds users have."""
import json
import os

import numpy as np
import pytest
from conftest import fails_cleanly, last_json, run_script, write_image_folder
from PIL import Image

from benchmarks.export_formats import PEAK

pytestmark = pytest.mark.slow  # end-to-end through the real scripts


def ckpt_of(trained):
    return os.path.join(trained[0], "resnet18-2_12.ckpt")


@pytest.mark.parametrize("fmt, batch", [("MINDIR", 2), ("ONNX", 1)])
def test_export_and_verify(trained, tmp_path, fmt, batch):
    """The exported file, loaded back (GraphCell / onnxruntime), gives the checkpoint network's logits."""
    if fmt == "ONNX":
        pytest.importorskip("onnxruntime")  # installed by requirements-test.txt; skipped only without it
    target = str(tmp_path / "tiny")
    proc = run_script("export.py", "--checkpoint_path", ckpt_of(trained), "--file_format", fmt, "--verify", "true",
                      "--batch_size", batch, "--file_name", target)
    assert proc.returncode == 0, proc.stderr
    line = [l for l in proc.stdout.splitlines() if l.startswith(f"verify {fmt}: max |exported - checkpoint| = ")]
    assert len(line) == 1, proc.stdout
    diff = float(line[0].split("= ")[1].split()[0])
    assert diff < 1e-4
    assert f"input {batch}x3x16x16" in proc.stdout
    peak = PEAK.search(proc.stdout)  # what benchmarks.export_formats reads
    assert peak and int(peak.group(1)) > 100, proc.stdout
    assert os.path.getsize(target + "." + fmt.lower()) > 1000
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp")]


def test_verify_catches_a_model_that_differs(trained, tmp_path):
    """check_export compares for real: a MINDIR of other weights fails and the numbers are printed."""
    import mindspore as ms

    from export import check_export
    from src.errors import UserError
    from src.resnet import create_network
    ms.set_seed(1)
    a, b = create_network("resnet18", 3, 4), create_network("resnet18", 3, 4)  # two random inits
    a.set_train(False), b.set_train(False)
    path = str(tmp_path / "a")
    ms.export(a, ms.Tensor(np.zeros((2, 3, 16, 16), np.float32)), file_name=path, file_format="MINDIR")
    assert check_export(a, path + ".mindir", "MINDIR", (2, 3, 16, 16), 0) < 1e-4
    with pytest.raises(UserError, match="differs from the checkpoint"):
        check_export(b, path + ".mindir", "MINDIR", (2, 3, 16, 16), 0)


def test_export_bad_input_leaves_nothing(trained, tmp_path):
    target = str(tmp_path / "x")
    fails_cleanly(run_script("export.py", "--checkpoint_path", ckpt_of(trained), "--file_format", "TFLITE",
                             "--file_name", target), "'TFLITE' is not one of MINDIR, AIR, ONNX")
    fails_cleanly(run_script("export.py", "--checkpoint_path", ckpt_of(trained), "--file_format", "AIR",
                             "--file_name", target), "AIR needs the Ascend backend")
    fails_cleanly(run_script("export.py", "--checkpoint_path", str(tmp_path / "nope.ckpt")), "checkpoint not found")
    fails_cleanly(run_script("export.py", "--checkpoint_path", ckpt_of(trained), "--class_num", "7",
                             "--file_name", target), "does not match the network")
    assert os.listdir(tmp_path) == []


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory):
    """One picture saved as JPEG, PNG, grayscale JPEG, RGBA PNG, palette PNG, CMYK JPEG and BMP, with a
    space and non-ASCII letters in one name, plus a text file that predict.py must ignore."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 255, (24, 20, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(root / "photo.jpg")
    Image.fromarray(rgb).save(root / "photo.png")
    Image.fromarray(rgb[:, :, 0]).save(root / "gray.jpg")
    Image.fromarray(np.dstack([rgb, rgb[:, :, :1]]), "RGBA").save(root / "alpha.png")
    Image.fromarray(rgb).convert("P").save(root / "palette.png")
    Image.fromarray(rgb).convert("CMYK").save(root / "cmyk.jpg")
    os.makedirs(root / "sub dir")
    Image.fromarray(rgb).save(root / "sub dir" / "été photo.bmp")
    (root / "notes.txt").write_text("not an image")
    return root


def test_predict_reads_every_image_kind(trained, photo_dir):
    proc = run_script("predict.py", photo_dir, "--checkpoint_path", ckpt_of(trained), "--json", "true")
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(l) for l in proc.stdout.splitlines() if l.startswith("{")]
    names = sorted(os.path.relpath(r["image"], photo_dir) for r in rows)
    assert names == sorted(["alpha.png", "cmyk.jpg", "gray.jpg", "palette.png", "photo.jpg", "photo.png",
                            os.path.join("sub dir", "été photo.bmp")])
    for r in rows:
        probs = [t["prob"] for t in r["top"]]
        assert len(r["top"]) == 3 and probs == sorted(probs, reverse=True)  # class_num 3 < top_k 5
        assert sum(probs) == pytest.approx(1.0, abs=1e-5)
        assert {t["class"] for t in r["top"]} == {"class_0", "class_1", "class_2"}  # names from class_indexing.json
    by_name = {os.path.basename(r["image"]): r["top"] for r in rows}
    # lossless copies of one picture, with alpha dropped as in training, give the same answer
    assert by_name["photo.png"] == by_name["alpha.png"] == by_name["été photo.bmp"]


def test_predict_matches_eval(trained, tmp_path):
    """predict.py preprocesses as evaluation does: on a lossless PNG folder its top-1 equals eval.py's."""
    val = write_image_folder(str(tmp_path / "val"), per_class=4, seed=7, fmt="PNG")
    ev = run_script("eval.py", "--checkpoint_path", ckpt_of(trained), "--data_path", val)
    assert ev.returncode == 0, ev.stderr
    pr = run_script("predict.py", val, "--checkpoint_path", ckpt_of(trained), "--json", "true", "--top_k", "1")
    assert pr.returncode == 0, pr.stderr
    rows = [json.loads(l) for l in pr.stdout.splitlines() if l.startswith("{")]
    assert len(rows) == 12
    hits = sum(r["top"][0]["class"] == os.path.basename(os.path.dirname(r["image"])) for r in rows)
    assert hits / 12 == pytest.approx(last_json(ev.stdout)["top1"])


def test_predict_bad_inputs(trained, photo_dir, tmp_path):
    ckpt = ckpt_of(trained)
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    # one unreadable file among good ones: named on one line, the rest classified, exit 2
    proc = run_script("predict.py", photo_dir / "photo.png", bad, "--checkpoint_path", ckpt)
    assert proc.returncode == 2
    errors = [l for l in proc.stderr.splitlines() if l.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {bad}: cannot be read as an image (")
    assert "photo.png: class_" in proc.stdout
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    assert run_script("predict.py", empty, "--checkpoint_path", ckpt).returncode == 2
    fails_cleanly(run_script("predict.py", tmp_path / "missing.jpg", "--checkpoint_path", ckpt), "image not found")
    fails_cleanly(run_script("predict.py", photo_dir, "--checkpoint_path", tmp_path / "no.ckpt"),
                  "checkpoint not found")
    fails_cleanly(run_script("predict.py", "--checkpoint_path", ckpt), "usage: predict.py")
    wrong_map = tmp_path / "map.json"
    wrong_map.write_text(json.dumps({"a": 0, "b": 1}))
    fails_cleanly(run_script("predict.py", photo_dir, "--checkpoint_path", ckpt, "--class_map", wrong_map),
                  "maps 2 classes, but the network has class_num 3")
    fails_cleanly(run_script("predict.py", photo_dir, "--checkpoint_path", ckpt, "--net_name", "resnet34"),
                  "does not match the network")

