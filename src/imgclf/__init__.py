"""imgclf: image classification from a folder of labelled pictures.

Python API::

    import imgclf
    run_dir = imgclf.train("data/", method="transfer")
    predictor = imgclf.load(run_dir)
    predictions = predictor.predict(["new_images/"])
    metrics, results = imgclf.evaluate(run_dir, "data/")
"""

from __future__ import annotations

import os

__version__ = "0.1.0"

__all__ = ["__version__", "train", "load", "evaluate"]


def train(data=None, method: str | None = None, config=None, resume: bool = False,
          **options):
    """Train on ``data`` by ``method`` (default scratch, or the ``config`` file's); returns
    the run folder.

    ``data`` is the dataset folder, or the whole data section as a mapping
    (``{"data": "DATA", "val_fraction": 0.3}``, ``{"train": "A", "test": "B"}``).
    ``config`` is a YAML file; ``options`` override it and the method's preset by
    section, e.g. ``train={"epochs": 5}``, ``model={"name": "mobilenetv2_100"}``, or
    top-level ``out="runs/x"``, ``seed=1``. ``resume=True`` with ``out`` alone continues
    the interrupted run in that folder with its own settings.

    As Keras' ``set_random_seed`` and fastai's ``set_seed`` do, training seeds Python's,
    NumPy's and PyTorch's global random generators with the run's seed (default 42).
    """
    from imgclf.config import build_config, resume_config
    from imgclf.engine.trainer import train as _train
    from imgclf.errors import ConfigError
    from imgclf.paths import path_argument

    if not isinstance(resume, bool):
        raise ConfigError(f"resume must be True or False, got {resume!r}.")
    if isinstance(config, dict):
        raise ConfigError("config is the path of a YAML file; give settings as keyword "
                          "sections instead, e.g. train={'epochs': 5}.")
    if options.get("out") is not None:
        options["out"] = str(path_argument(options["out"], "out"))
    if resume:
        given = [k for k in options if k != "out"]
        given += [k for k, v in (("data", data), ("method", method), ("config", config))
                  if v is not None]
        return _train(resume_config(options.get("out"), given, flag="out="), resume=True)
    if method is not None:  # as --method, it beats a method named in the config file
        options["method"] = method
    if isinstance(data, dict):
        options["data"] = {k: str(v) if isinstance(v, os.PathLike) else v
                           for k, v in data.items()}
    elif data is not None:
        options["data"] = {"data": str(path_argument(data, "data"))}
    return _train(build_config("scratch", config, options))


def load(run_dir, device: str = "auto"):
    """A predictor for a trained run: ``load(run).predict(paths)``.

    On a CPU it has malloc keep freed memory for reuse and flushes denormal floats to
    zero, for the whole process, as training does (README, "Training options").
    """
    from imgclf.predict import load as _load

    return _load(run_dir, device=device)


def evaluate(run_dir, data, split: str | None = None, out=None, device: str = "auto",
             tta: bool | None = None):
    """Evaluate a trained run on labelled ``data``, as ``imgclf evaluate`` does; returns
    (metrics, results folder)."""
    from imgclf.evaluation import evaluate_folder

    return evaluate_folder(run_dir, data, split=split, out=out, device=device, tta=tta)
