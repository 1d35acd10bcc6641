"""logger=tensorboard: event files of a sweep's runs read back with tensorboard's own
readers, and the one-line error when the package is missing."""

from __future__ import annotations

import json
import sys

import pytest
from conftest import run_main


def test_a_sweep_logs_every_epochs_scalars_and_each_runs_hparams(synthetic_dir, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer
    from tensorboard.plugins.hparams import plugin_data_pb2

    result = run_main("train", "-m", f"data.dir={synthetic_dir}", "data.val_size=200",
                      "model=tiny", "data.limit=500", "trainer.epochs=2", "trainer.device=cpu",
                      "report.enabled=false", "logger=tensorboard", "seed=0,1",
                      f"hydra.sweep.dir={tmp_path}")
    assert result.returncode == 0, result.stderr
    jobs = sorted(p.parent for p in tmp_path.glob("*/summary.json"))
    assert len(jobs) == 2 and not any("logger" in j.name for j in jobs)  # names no folder

    for job in jobs:
        events = EventAccumulator(str(job / "tb"))
        events.Reload()
        records = [json.loads(line) for line in (job / "metrics.jsonl").read_text().splitlines()]
        for key in ("train/loss", "train/acc", "val/loss", "val/acc", "lr", "epoch_time_s"):
            logged = events.Scalars(key)
            assert [e.step for e in logged] == [1, 2], key
            assert [e.value for e in logged] == pytest.approx([r[key] for r in records]), key
        summary = json.loads((job / "summary.json").read_text())
        assert events.Scalars("test/acc")[0].value == pytest.approx(summary["test/acc"])

    # What the HParams tab reads for `tensorboard --logdir SWEEP`: one session per run.
    runs = EventMultiplexer()
    runs.AddRunsFromDirectory(str(tmp_path))
    runs.Reload()
    sessions = {}
    for run, tags in runs.PluginRunToTagToContent("hparams").items():
        for content in tags.values():
            data = plugin_data_pb2.HParamsPluginData.FromString(content)
            if data.WhichOneof("data") == "session_start_info":
                sessions[run] = data.session_start_info.hparams
    assert sorted(sessions) == [f"{job.name}/tb" for job in jobs]
    first, second = (sessions[f"{job.name}/tb"] for job in jobs)
    assert (first["seed"].number_value, second["seed"].number_value) == (0, 1)
    assert first["model.name"].string_value == "tiny" and "data.dir" not in first


@pytest.mark.parametrize("package,install", [
    ("tensorboard", "pip install tensorboard"),
    ("mlflow", "pip install 'mnistcnn[mlflow]'")])
def test_a_missing_tracker_package_is_one_line_before_any_run_folder(package, install,
                                                                     synthetic_dir, tmp_path,
                                                                     monkeypatch):
    # A package that cannot be imported: None in sys.modules makes `import` raise ImportError
    # (torch's tensorboard module too, which may already be imported in this process).
    for name in (package, "torch.utils.tensorboard"):
        monkeypatch.setitem(sys.modules, name, None)
    result = run_main("train", f"data.dir={synthetic_dir}", f"logger={package}",
                      f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: logger={package} needs the {package} package: {install} "
        "(or `make install`, which includes it), or use logger=none"]
    assert not (tmp_path / "run").exists()
