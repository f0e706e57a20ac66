"""tools/plot_metrics.py: the series read from metrics.jsonl, the PNG, and its one-line errors."""
import json
import sys

import pytest
from conftest import run_script
from PIL import Image

from src.errors import UserError
from tools.plot_metrics import draw, read_run


def _write_metrics(path, thor=False):
    events = [{"event": "start", "epoch": 0, "time": 100.0}]
    for step in (2, 4):
        e = {"event": "step", "epoch": 1, "step": step, "loss": 2.0 / step, "lr": 0.1 * step, "img_per_s": 50.0,
             "overflow": step == 4, "time": 100.0 + step}
        if thor:
            e["damping"] = 0.03
        events.append(e)
    events += [{"event": "eval", "epoch": 1, "step": 4, "top1": 0.25, "time": 160.0},
               {"event": "eval", "epoch": 2, "step": 8, "top1": 0.5, "time": 220.0}]
    path.write_text("\n".join(json.dumps(e) for e in events) + "\n")
    return path


def test_series_and_png(tmp_path):
    momentum = _write_metrics(tmp_path / "momentum.jsonl")
    thor_dir = tmp_path / "thor"
    thor_dir.mkdir()
    _write_metrics(thor_dir / "metrics.jsonl", thor=True)
    series = read_run(str(momentum))
    assert series["loss"] == [(2, 1.0)]  # the overflow step's loss is not drawn
    assert series["lr"] == [(2, 0.2), (4, 0.4)] and series["damping"] == []
    assert series["top1_epoch"] == [(1, 0.25), (2, 0.5)]
    assert series["top1_time"] == [(1.0, 0.25), (2.0, 0.5)]  # minutes since the start record
    assert read_run(str(thor_dir))["damping"] == [(2, 0.03), (4, 0.03)]
    out = tmp_path / "plots" / "runs.png"
    proc = run_script("-m", "tools.plot_metrics", momentum, thor_dir, "--output", out, "--labels", "Momentum,THOR")
    assert proc.returncode == 0, proc.stderr
    with Image.open(out) as img:
        assert img.format == "PNG" and img.size[0] > 800 and img.size[1] > 500


def test_errors_are_one_line(tmp_path, monkeypatch):
    proc = run_script("-m", "tools.plot_metrics", tmp_path / "nothing")
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error: ") and "no metrics.jsonl" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"event": "start", "time": 1}\nnot json\n')
    with pytest.raises(UserError, match="line 2 is not JSON"):
        read_run(str(bad))
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    with pytest.raises(UserError, match="matplotlib is not installed"):
        draw([read_run(str(_write_metrics(tmp_path / "m.jsonl")))], str(tmp_path / "x.png"), ["m"])
