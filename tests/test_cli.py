import logging
import runpy
import subprocess
import sys
import warnings

import pytest
import torch
from commands import run_module

import mlp_lab.predict
import mlp_lab.train
import mlp_lab.xor
from mlp_lab.cli import setting_names
from mlp_lab.config import TrainConfig


def one_line_error(capsys, monkeypatch, command, *overrides: str) -> str:
    """The error `python -m command overrides...` ends with, run in this process (composition
    fails before any work, so nothing else would happen in a process of its own)."""
    monkeypatch.setattr(sys, "argv", [command.__file__, *overrides])
    with pytest.raises(SystemExit) as stop, warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # runpy: the module is imported already
        runpy.run_module(command.__name__, run_name="__main__")
    captured = capsys.readouterr()
    assert captured.out == captured.err == ""  # Hydra printed nothing of its own
    return str(stop.value.code)


@pytest.mark.parametrize(
    "command, overrides, error",
    [
        (
            mlp_lab.train,
            ["trainer.max_epoch=2"],
            "error: trainer.max_epoch is not a setting of mlp_lab.train: did you mean "
            "trainer.max_epochs? (every setting: python -m mlp_lab.train --cfg job)",
        ),
        (
            mlp_lab.train,
            ["+trainer.max_epoch=2"],  # what Hydra's own message for the key above suggests
            "error: trainer.max_epoch is not a setting of mlp_lab.train: did you mean "
            "trainer.max_epochs? (every setting: python -m mlp_lab.train --cfg job)",
        ),
        (
            mlp_lab.train,
            ["++model.hiden=[64]"],
            "error: model.hiden is not a setting of mlp_lab.train: did you mean model.hidden? "
            "(every setting: python -m mlp_lab.train --cfg job)",
        ),
        (
            mlp_lab.train,
            ["model.hiden=[64]"],
            "error: model.hiden is not a setting of mlp_lab.train: did you mean model.hidden? "
            "(every setting: python -m mlp_lab.train --cfg job)",
        ),
        (
            mlp_lab.train,
            ["data=nosuch"],
            "error: data=nosuch: no such option; use one of fashion_mnist, mnist",
        ),
        (
            mlp_lab.train,
            ["logger=nosuch"],
            "error: logger=nosuch: no such option; use one of csv, many, mlflow, none, tensorboard",
        ),
        (
            mlp_lab.train,
            ["callbacks=early_stop"],
            "error: callbacks=early_stop: no such option; use one of early_stopping, rich",
        ),
        (
            mlp_lab.train,
            ["seed=abc"],
            "error: seed=abc: Value 'abc' of type 'str' could not be converted to Integer",
        ),
        (
            mlp_lab.train,
            ["model.hidden=[abc]"],
            "error: model.hidden=[abc]: Value 'abc' of type 'str' could not be converted to "
            "Integer",
        ),
        (
            mlp_lab.train,
            ["model.hidden=256"],  # OmegaConf: "int is not a ListConfig, list or tuple"
            "error: model.hidden=256: use a list: model.hidden=[256]",
        ),
        (
            mlp_lab.train,
            ["model.hidden=[1,2"],
            "error: model.hidden=[1,2: no viable alternative at input '[1,2' (Hydra's override "
            "syntax: key=value, key=[a,b], group=option)",
        ),
        (
            mlp_lab.train,
            ["callbacks.early_stopping.patience=3"],
            "error: callbacks.early_stopping.patience is in callbacks.early_stopping, which is "
            "off: select it first, callbacks=early_stopping callbacks.early_stopping.patience=3",
        ),
        (
            mlp_lab.train,
            ["logger.mlflow.tracking_uri=http://x"],
            "error: logger.mlflow.tracking_uri is in logger.mlflow, which is off: select it "
            "first, logger=mlflow logger.mlflow.tracking_uri=http://x",
        ),
        (
            mlp_lab.predict,
            ["ckpts=x"],
            "error: ckpts is not a setting of mlp_lab.predict: did you mean ckpt? "
            "(every setting: python -m mlp_lab.predict --cfg job)",
        ),
        (
            mlp_lab.xor,
            ["xor.hiden=3"],
            "error: xor.hiden is not a setting of mlp_lab.xor "
            "(every setting: python -m mlp_lab.xor --cfg job)",
        ),
        (
            mlp_lab.train,
            ["modle.hidden=[128]"],  # Hydra names the section alone: `modle`
            "error: modle.hidden is not a setting of mlp_lab.train: did you mean model.hidden? "
            "(every setting: python -m mlp_lab.train --cfg job)",
        ),
    ],
)
def test_a_config_hydra_cannot_compose_ends_in_one_line(
    command, overrides, error, capsys, monkeypatch
):
    assert one_line_error(capsys, monkeypatch, command, *overrides) == error


def test_a_missing_group_option_is_one_line_from_a_real_process(tmp_path):
    # As the process ends: its exit status and all it printed; the cases above run in-process.
    result = run_module("mlp_lab.eval", "ckpt=x", "data=cifar", f"hydra.run.dir={tmp_path / 'run'}")
    error = "error: data=cifar: no such option; use one of fashion_mnist, mnist"
    assert (result.returncode, result.stdout, result.stderr) == (1, "", f"{error}\n")
    assert not (tmp_path / "run").exists()  # nothing written


def test_the_settings_suggested_are_the_schemas_whole():
    names = setting_names(TrainConfig)
    assert {"trainer.max_epochs", "model.hidden", "seed", "trial.pruner.name"} <= set(names)
    assert {"callbacks.early_stopping.patience", "logger.mlflow.tracking_uri"} <= set(names)


def test_values_refused_before_any_work_leave_no_run_directory(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # runs go to outputs/runs/ here
    # Hydra sets up each run's logging to this test's captured output: undone afterwards.
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", list(root.handlers))
    bad = {
        "model.hidden=[]": "a non-empty list of positive widths",
        "optimizer.lr=-1": "a positive float",
        "optimizer.lr=-0.1": "a positive float",
        "trainer.max_epochs=0": "a positive integer",
        "data.batch_size=0": "a positive integer",
        "resume=/nonexistent": "give one of outputs/runs/<time>",
    }
    for override, allowed in bad.items():
        error = one_line_error(capsys, monkeypatch, mlp_lab.train, override)
        assert error.startswith(f"error: {override.split('=')[0]}="), error
        assert error.endswith(allowed) and "\n" not in error, error
    # A study given without -m would train one default run: refused with the command to use.
    assert one_line_error(
        capsys, monkeypatch, mlp_lab.train, "experiment=batch_norm", "seed=3"
    ) == (
        "error: experiment=batch_norm is a study, a sweep over model.batch_norm=false,true: run "
        "it with -m: python -m mlp_lab.train -m experiment=batch_norm seed=3"
    )
    if not torch.cuda.is_available():  # a preset whose device is missing
        assert one_line_error(capsys, monkeypatch, mlp_lab.train, "trainer=gpu") == (
            "error: trainer.accelerator='gpu' is not allowed: no CUDA GPU on this machine; "
            "use trainer=cpu"
        )
    assert not (tmp_path / "outputs").exists()  # nor the folders made for them


# Exits through Hydra's sys.exit like the command itself; atexit then names what got imported.
IMPORTS_AT_EXIT = """
import atexit, runpy, sys
atexit.register(lambda: print("imported:", [m for m in ("torch", "lightning") if m in sys.modules]))
sys.argv = sys.argv[1:]
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""


@pytest.mark.parametrize(
    "module, args, error",
    [
        ("mlp_lab.train", ["--help"], None),
        ("mlp_lab.train", ["trainer.max_epoch=2"], "did you mean trainer.max_epochs?"),
        ("mlp_lab.train", ["optimizer.lr=-1"], "a positive float"),
        ("mlp_lab.train", ["model.hidden=[]"], "a non-empty list of positive widths"),
        ("mlp_lab.train", ["model.activation=relux"], "use one of relu, sigmoid"),
        ("mlp_lab.train", ["trainer=gpu"], "no CUDA GPU on this machine; use trainer=cpu"),
        ("mlp_lab.eval", ["--help"], None),
        ("mlp_lab.eval", ["ckt=x"], "did you mean ckpt?"),
        ("mlp_lab.predict", ["ckpt=x", "images=[nowhere.png]"], "nowhere.png: no such file"),
    ],
)
def test_help_and_a_mistake_answer_before_torch_or_lightning_is_imported(
    module, args, error, tmp_path
):
    if "trainer=gpu" in args and torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    run_dir = [] if module == "mlp_lab.predict" else [f"hydra.run.dir={tmp_path}/run"]
    result = subprocess.run(
        [sys.executable, "-c", IMPORTS_AT_EXIT, module, *args, *run_dir],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.stdout.splitlines()[-1] == "imported: []", (args, result.stdout)
    if error:
        assert result.stderr.startswith("error: ") and error in result.stderr, result.stderr
        assert result.stderr.count("\n") == 1 and not (tmp_path / "run").exists()
