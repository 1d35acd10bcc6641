"""Config errors are caught before any run folder exists: one line, exit code 2."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from mnistcnn.__main__ import main
from mnistcnn.base.config import CONF_DIR, choice, compose_config, saved_config, to_plain
from mnistcnn.base.config_keys import NOT_SETTINGS
from mnistcnn.runs import rerun


@pytest.mark.parametrize("args, message", [
    (["model=foo"], "unknown config option 'model/foo'; choose model from: classic, conv5x5"),
    (["optim=lbfgs"], "choose optim from: adadelta, adam, adamw, rmsprop, sgd"),
    (["model.nope=3"], "unknown config key 'model.nope'"),
    (["optim=adam", "optim.momentum=0.9"], "unknown config key 'optim.momentum'"),
    (["optim.lr=abc"], "optim.lr=abc: Value 'abc' of type 'str' could not be converted to Float"),
    (["trainer.epochs=1.5"], "trainer.epochs=1.5: Value '1.5' of type 'float' could not be"),
    (["model.activation=swish"], "expected one of [relu, sigmoid, tanh, leaky_relu, elu, gelu]"),
    (["optim.lr=-0.1"], "optim.lr=-0.1 is out of range: must be > 0"),
    (["trainer.batch_size=0"], "trainer.batch_size=0 is out of range: must be >= 1"),
    (["model.dropout=1.5"], "model.dropout=1.5 is out of range"),
    (["data.resplit=1.2"], "data.resplit=1.2 is out of range: must be in (0, 1)"),
    (["data.classes={0:[0,1],1:[2,3]}"], "data.classes misses digits [4, 5, 6, 7, 8, 9]"),
    (["model=keras", "model.conv_layers=4"], "stage 'conv4' gets a 1x1 feature map"),
    (["-m", "optim.lr=0.1,-1"], "optim.lr=-1.0 is out of range"),
])
def test_bad_config_is_one_line_and_exit_2(args, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["train", *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    assert message in err
    assert not (tmp_path / "outputs").exists()  # nothing was created


def test_unknown_command_and_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit"])
    assert exit_info.value.code == 2
    assert "unknown command 'fit'; choose one of: train" in capsys.readouterr().err
    main(["--help"])
    out = capsys.readouterr().out
    for command in ("train", "summary", "evaluate"):
        assert f"  {command}" in out


def test_summary_prints_the_layer_table_without_data(capsys, monkeypatch):
    monkeypatch.setenv("MNISTCNN_DATA_DIR", "/nonexistent")
    main(["summary", "model=tiny", "data.classes={0:[0,6],1:[1,7],2:[2,3,5,8],3:[4,9]}"])
    out = capsys.readouterr().out
    assert "model tiny (4 classes)" in out and "total params:" in out and "4,368" in out


def test_defaults_compose_to_the_documented_run():
    cfg = compose_config([])
    assert cfg.model.name == "conv5x5" and cfg.optim.name == "adam" and cfg.sched.name == "none"
    assert cfg.data.val_size == 10000 and cfg.trainer.batch_size == 64
    for group, options in {"optim": ["sgd", "adamw", "rmsprop", "adadelta"],
                           "sched": ["step", "cosine", "onecycle"],
                           "data": ["fashion_mnist"]}.items():
        for option in options:
            assert choice(compose_config([f"{group}={option}"])[group].name) == option


def test_configs_saved_before_new_trainer_keys_get_their_defaults():
    saved = to_plain(compose_config(["model=tiny", "trainer.epochs=2"]))
    for key in ("precision", "compile", "compile_mode"):
        del saved["trainer"][key]
    cfg = saved_config(saved)
    assert cfg.trainer.epochs == 2 and cfg.model.name == "tiny"
    assert to_plain(cfg)["trainer"] == to_plain(compose_config([]))["trainer"] | {"epochs": 2}


def every_key(tree: dict, prefix: str = "") -> set[str]:
    """Each key of a plain config, nodes and leaves: "report" and "report.plots"."""
    keys = set()
    for key, value in tree.items():
        keys.add(f"{prefix}{key}")
        if isinstance(value, dict):
            keys |= every_key(value, f"{prefix}{key}.")
    return keys


def test_job_folder_names_leave_out_exactly_the_keys_that_do_not_change_training():
    """One list: conf/config.yaml's exclude_keys is each key and group that NOT_SETTINGS
    covers (Hydra matches whole keys), and an entry covers only itself and its subkeys."""
    keys = {group.name for group in CONF_DIR.iterdir() if group.is_dir()}
    keys.add(rerun.OPTION.split("=")[0])  # a group made at run time
    for overrides in (["logger=none"], ["logger=tensorboard"],
                      ["logger=mlflow", "+experiment=pooling"]):  # every logger key, a study
        keys |= every_key(OmegaConf.to_container(compose_config(overrides)))
    for key in keys:
        assert key.startswith(NOT_SETTINGS) == any(
            key == entry or key.startswith(f"{entry}.") for entry in NOT_SETTINGS), key
    exclude_keys = compose_config([], with_hydra=True).hydra.job.config.override_dirname \
        .exclude_keys
    assert sorted(exclude_keys) == sorted(k for k in keys if k.startswith(NOT_SETTINGS))


def test_a_job_folder_is_named_after_its_settings_only():
    overrides = ["+experiment=pooling", "model.pool=max", "seed=0", "quick=on",
                 "report.enabled=false", "report.tsne_samples=10", "data.dir=/data/mnist",
                 "logger=mlflow", "logger.tracking_uri=sqlite:///some/dir/m.db"]
    hydra = compose_config(overrides, with_hydra=True).hydra
    assert hydra.job.override_dirname == "+experiment=pooling,model.pool=max,quick=on,seed=0"
