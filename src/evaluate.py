"""Top-1/top-5 evaluation that counts every image of the split exactly once."""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

import mindspore as ms
import numpy as np
from mindspore import nn, ops

from src.train_step import compile_ahead_once

if TYPE_CHECKING:
    import mindspore.dataset as ds


class LogitsCell(nn.Cell):
    """Inference wrapper: the network's logits in float32. The first call with a new input shape (or train/eval
    mode) compiles its graph ahead of running it and gives the heap the compile freed back (as the training cells
    do, ``train_step.compile_ahead``); a smaller last batch is a new shape."""

    def __init__(self, network):
        super().__init__(auto_prefix=False)
        self.network = network
        self.compiled_for = set()  # inputs compiled ahead (train_step.compile_ahead_once)

    def __call__(self, image):
        compile_ahead_once(self, image)
        return super().__call__(image)

    def construct(self, image):
        return ops.cast(self.network(image), ms.float32)


def topk_correct(logits: np.ndarray, labels: np.ndarray, k: int) -> int:
    """Number of rows whose label is among the k largest logits."""
    k = min(k, logits.shape[1])
    top = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    return int((top == labels[:, None]).any(axis=1).sum())


class _SumAcrossRanks(nn.Cell):
    def __init__(self):
        super().__init__()
        self.allreduce = ops.AllReduce()

    def construct(self, x):
        return self.allreduce(x)


def evaluate(eval_cell: nn.Cell, dataset: ds.Dataset, network: nn.Cell | None = None,
             distributed: bool = False) -> dict:
    """Run ``eval_cell`` (a LogitsCell) over ``dataset`` and return
    ``{"top1", "top5", "images", "loss", "seconds"}``. Puts ``network`` (the cell's network) in eval mode
    for the pass and back in train mode afterwards when it was training. With ``distributed`` every rank
    evaluates its own disjoint shard and the counts are summed over ranks (all ranks get the totals)."""
    target = network if network is not None else eval_cell
    was_training = target.training
    eval_cell.set_train(False)
    start = time.time()
    n = c1 = c5 = 0
    loss_sum = 0.0
    for batch in dataset.create_tuple_iterator(num_epochs=1, output_numpy=True):
        image, label = batch[0], batch[1].astype(np.int64)
        logits = eval_cell(ms.Tensor(image)).asnumpy().astype(np.float64)
        n += label.shape[0]
        c1 += topk_correct(logits, label, 1)
        c5 += topk_correct(logits, label, 5)
        shifted = logits - logits.max(axis=1, keepdims=True)
        logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        loss_sum += float(-logp[np.arange(label.shape[0]), label].sum())
    if was_training:
        target.set_train(True)
    if distributed:
        totals = _SumAcrossRanks()(ms.Tensor(np.array([n, c1, c5, loss_sum], np.float32))).asnumpy()
        n, c1, c5 = (int(round(float(v))) for v in totals[:3])
        loss_sum = float(totals[3])
    return {"top1": c1 / n if n else 0.0, "top5": c5 / n if n else 0.0, "images": n,
            "correct_top1": c1, "correct_top5": c5,
            "loss": loss_sum / n if n else 0.0, "seconds": time.time() - start}
