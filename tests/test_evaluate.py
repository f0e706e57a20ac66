"""Evaluation: every image counted once, top-k against NumPy, and the eval graph compiled ahead per input shape."""
import mindspore as ms
import mindspore.dataset as ds
import numpy as np
from mindspore import nn

import src.train_step as train_step
from src.evaluate import LogitsCell, evaluate


class _Linear(nn.Cell):
    def __init__(self):
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc = nn.Dense(3 * 4 * 4, 6)

    def construct(self, x):
        return self.fc(self.flatten(x))


def test_eval_counts_every_image_and_compiles_each_shape_ahead(monkeypatch):
    """10 images in batches of 4: two input shapes (4 and the last 2), each compiled (and the freed heap given back)
    before its first run, none again on a second pass; top-1/top-5 and the loss equal NumPy's on the same logits."""
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_seed(0)
    rng = np.random.default_rng(0)
    images = rng.standard_normal((10, 3, 4, 4)).astype(np.float32)
    labels = rng.integers(0, 6, 10).astype(np.int32)
    network = _Linear()
    cell = LogitsCell(network)
    seen = []

    def release():
        seen.append(len(cell.compile_cache))  # graphs compiled when the heap is given back
        return True

    monkeypatch.setattr(train_step, "release_free_heap", release)
    dataset = ds.NumpySlicesDataset((images, labels), ["image", "label"], shuffle=False).batch(4)
    result = evaluate(cell, dataset, network)
    assert seen == [1, 2]
    again = evaluate(cell, dataset, network)
    assert seen == [1, 2] and len(cell.compile_cache) == 2  # nothing compiled on the second pass
    assert {k: v for k, v in again.items() if k != "seconds"} == {k: v for k, v in result.items() if k != "seconds"}

    logits = cell(ms.Tensor(images)).asnumpy().astype(np.float64)  # a third shape: compiled ahead too
    assert seen == [1, 2, 3]
    order = np.argsort(-logits, axis=1)
    assert result["images"] == 10
    assert result["correct_top1"] == int((order[:, 0] == labels).sum())
    assert result["correct_top5"] == int((order[:, :5] == labels[:, None]).any(axis=1).sum())
    shifted = logits - logits.max(axis=1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    np.testing.assert_allclose(result["loss"], -logp[np.arange(10), labels].mean(), rtol=1e-5)
