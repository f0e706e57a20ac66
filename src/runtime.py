"""Device, execution mode, seeds and (for data parallel) communication setup."""
from __future__ import annotations

import os
import random
from typing import TYPE_CHECKING

import mindspore as ms
import mindspore.dataset as ds
import numpy as np

from src import host
from src.errors import UserError

if TYPE_CHECKING:
    from easydict import EasyDict


_NOTES = []


def setup(cfg: EasyDict) -> tuple[int, int]:
    """Configure MindSpore for ``cfg`` and return ``(rank, group_size)``.

    With ``run_distribute`` the process must have been started by a launcher (msrun, or a rank table on
    Ascend); communication is initialised and DATA_PARALLEL with gradient mean is set. On CPU, oneDNN's ISA
    cap is decided first (before any kernel exists); what was decided is kept for :func:`notes`.
    """
    host.apply_isa_cap(cfg.device_target, cfg.cpu_isa_cap, log=_NOTES.append)
    cache_warning = host.compile_cache_warning()
    if cache_warning:
        _NOTES.append(cache_warning)
    try:
        ms.set_device(cfg.device_target)
    except Exception as exc:  # a backend that this MindSpore build does not have
        raise UserError(f"config key 'device_target': {cfg.device_target} is not usable here ({exc})") from None
    ms.set_context(mode=ms.GRAPH_MODE if cfg.mode == "GRAPH" else ms.PYNATIVE_MODE)
    threads = host.op_threads() if cfg.device_target == "CPU" else None
    if threads:
        ms.device_context.cpu.op_tuning.threads_num(threads)
        _NOTES.append(f"CPU kernels: {threads} thread(s) per rank ({host.ranks_on_this_machine()} ranks share "
                      f"{host.usable_cores()} cores)")
    seed_everything(cfg.seed)
    if not cfg.run_distribute:
        return 0, 1
    from mindspore.communication import get_group_size, get_rank, init
    try:
        init()
    except Exception as exc:
        raise UserError(f"run_distribute: communication could not be initialised ({str(exc).splitlines()[0]}); "
                        "start the job with scripts/run_distribute_train*.sh or msrun") from None
    rank, group = get_rank(), get_group_size()
    if cfg.device_num not in (1, group):
        raise UserError(f"config key 'device_num' is {cfg.device_num} but the launcher started {group} processes")
    ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True,
                                 device_num=group)
    if cfg.all_reduce_fusion_config:
        ms.set_auto_parallel_context(all_reduce_fusion_config=list(cfg.all_reduce_fusion_config))
    return rank, group


def notes() -> list[str]:
    """Lines about the host that :func:`setup` decided (the oneDNN cap), for the caller's log."""
    return list(_NOTES)


def seed_everything(seed: int) -> None:
    ms.set_seed(seed)
    ds.config.set_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
