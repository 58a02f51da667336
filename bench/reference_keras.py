"""The reference study's own Keras pipeline, timed: load, train, evaluate on test.

    bench/.venv-tf/bin/python bench/reference_keras.py --data examples/intel-mini \
        --method scratch --epochs 2 --patience 0 --json-out keras.json

Written after the study's notebook (Intel scene images, 6 classes, 150x150 JPEGs):
images are read with PIL into numpy arrays at 150x150, validation is
``train_test_split(test_size=0.2, stratify=y, random_state=42)``, labels are one-hot for
categorical cross-entropy, Adam 1e-3, batch 32. ``scratch`` trains the small CNN on
images rescaled by 1/255; ``augment`` trains the wider CNN on
``ImageDataGenerator(...).flow(...)``, which rescales and augments every batch on the fly
in the training process, as the notebook did.

Runs in TensorFlow's own virtual environment (``bench/.venv-tf``, made by
``bench/bench_reference.py --setup``), never in imgclf's: it imports nothing from imgclf.
Prints one JSON object (per-epoch seconds, total seconds, test accuracy, versions) as the
last line of stdout, and writes it to ``--json-out`` when given.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.model_selection import train_test_split

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
# Where each split lives: the plain layout, then Kaggle's doubled folders.
SPLIT_FOLDERS = {
    "train": ("train", "seg_train/seg_train"),
    "test": ("test", "seg_test/seg_test"),
}


def find_split(data: Path, split: str) -> Path:
    """The folder of ``split`` under ``data``, in either layout the dataset ships in."""
    for relative in SPLIT_FOLDERS[split]:
        if (data / relative).is_dir():
            return data / relative
    tried = " or ".join(f"{data / relative}/" for relative in SPLIT_FOLDERS[split])
    raise SystemExit(f"error: no {split} split in {data}: expected {tried} with one "
                     "folder per class.")


def load_folder(
    folder: Path, classes: list[str], size: int
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Every image of ``folder/<class>/`` as uint8 (N, size, size, 3), its label, and the
    files PIL could not read (listed, never silently dropped)."""
    images, labels, skipped = [], [], []
    for label, name in enumerate(classes):
        class_dir = folder / name
        if not class_dir.is_dir():
            continue
        for path in sorted(class_dir.iterdir()):
            if path.name.startswith(".") or path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                with Image.open(path) as image:
                    rgb = image.convert("RGB").resize((size, size), Image.BILINEAR)
            except (OSError, ValueError) as exc:
                skipped.append(f"{path}: {exc}")
                continue
            images.append(np.asarray(rgb, dtype=np.uint8))
            labels.append(label)
    for line in skipped:
        print(f"skipped unreadable image {line}", file=sys.stderr)
    return np.stack(images), np.asarray(labels), skipped


def build_model(keras, method: str, num_classes: int, size: int):
    """The notebook's Sequential CNN: the small one for scratch, the wide one for augment."""
    layers = keras.layers
    if method == "scratch":
        body = [
            layers.Conv2D(32, (3, 3), activation="relu"), layers.MaxPooling2D(2),
            layers.Dropout(0.5),
            layers.Conv2D(32, (3, 3), activation="relu"), layers.MaxPooling2D(2),
            layers.Dropout(0.3),
            layers.Conv2D(32, (3, 3), activation="relu"), layers.MaxPooling2D(2),
            layers.Flatten(),
            layers.Dense(128, activation="relu"),
        ]
    else:
        body = [
            layers.Conv2D(64, (3, 3), activation="relu"), layers.MaxPooling2D(2),
            layers.Dropout(0.5),
            layers.Conv2D(128, (3, 3), activation="relu"), layers.MaxPooling2D(2),
            layers.Dropout(0.3),
            layers.Conv2D(128, (3, 3), activation="relu"), layers.MaxPooling2D(2),
            layers.Flatten(),
            layers.Dropout(0.5),
            layers.Dense(512, activation="relu"),
        ]
    model = keras.Sequential([keras.Input(shape=(size, size, 3)), *body,
                              layers.Dense(num_classes, activation="softmax")])
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=1e-3),
                  loss="categorical_crossentropy", metrics=["accuracy"])
    return model


def epoch_timer(keras):
    """A callback that records each epoch's wall seconds (training plus validation)."""

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seconds: list[float] = []

        def on_epoch_begin(self, epoch, logs=None):
            self._tic = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.perf_counter() - self._tic)

    return EpochTimer()


def training_input(keras, method: str, x_train: np.ndarray, y_train: np.ndarray, batch: int,
                   seed: int):
    """What ``fit`` trains on: rescaled arrays, or the augmenting generator over raw ones."""
    if method == "scratch":
        return {"x": x_train.astype("float32") / 255.0, "y": y_train, "batch_size": batch}
    # Keras 3 keeps the legacy generator only under tf.keras (keras._tf_keras).
    datagen = keras.preprocessing.image.ImageDataGenerator(
        rescale=1 / 255, rotation_range=40, width_shift_range=0.2, height_shift_range=0.2,
        shear_range=0.2, zoom_range=0.2, horizontal_flip=True, fill_mode="nearest")
    return {"x": datagen.flow(x_train, y_train, batch_size=batch, seed=seed)}


def run(args: argparse.Namespace) -> dict:
    """Load, train and evaluate as the notebook did; every stage timed."""
    start = time.perf_counter()
    import tensorflow as tf
    from tensorflow import keras

    imported = time.perf_counter()
    keras.utils.set_random_seed(args.seed)
    train_dir, test_dir = find_split(args.data, "train"), find_split(args.data, "test")
    classes = sorted(p.name for p in train_dir.iterdir() if p.is_dir()
                     and not p.name.startswith("."))
    unknown = sorted(p.name for p in test_dir.iterdir() if p.is_dir()
                     and not p.name.startswith(".") and p.name not in classes)
    if unknown:
        raise SystemExit(f"error: test classes {unknown} are not in {train_dir}; "
                         f"train has {classes}.")
    x, y, skipped = load_folder(train_dir, classes, args.img_size)
    x_test, y_test, skipped_test = load_folder(test_dir, classes, args.img_size)
    x_train, x_val, y_train, y_val = train_test_split(
        x, y, test_size=0.2, stratify=y, random_state=args.seed)
    one_hot = keras.utils.to_categorical
    y_train, y_val = one_hot(y_train, len(classes)), one_hot(y_val, len(classes))
    y_test = one_hot(y_test, len(classes))
    x_val = x_val.astype("float32") / 255.0
    x_test = x_test.astype("float32") / 255.0
    loaded = time.perf_counter()

    model = build_model(keras, args.method, len(classes), args.img_size)
    timer = epoch_timer(keras)
    callbacks = [timer]
    # Keras' own patience=0 stops at the first epoch without improvement; here 0 means
    # no early stopping at all, so that a fixed epoch budget runs in full.
    if args.patience > 0:
        callbacks.append(keras.callbacks.EarlyStopping(monitor="val_loss",
                                                       patience=args.patience))
    history = model.fit(**training_input(keras, args.method, x_train, y_train,
                                         args.batch_size, args.seed),
                        epochs=args.epochs, validation_data=(x_val, y_val),
                        callbacks=callbacks, verbose=2)
    fitted = time.perf_counter()
    test_loss, test_accuracy = model.evaluate(x_test, y_test, batch_size=args.batch_size,
                                              verbose=0)
    done = time.perf_counter()
    return {
        "framework": "keras",
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "method": args.method,
        "epochs": len(timer.seconds),
        "epoch_seconds": [round(s, 3) for s in timer.seconds],
        "import_seconds": round(imported - start, 3),
        "load_seconds": round(loaded - imported, 3),
        "fit_seconds": round(fitted - loaded, 3),
        "evaluate_seconds": round(done - fitted, 3),
        "total_seconds": round(done - start, 3),
        "test_accuracy": float(test_accuracy),
        "test_loss": float(test_loss),
        "val_accuracy": [float(v) for v in history.history.get("val_accuracy", [])],
        "images": {"train": len(x_train), "val": len(x_val), "test": len(x_test)},
        "skipped_files": skipped + skipped_test,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True,
                        help="dataset folder with train/ and test/ (or Kaggle's "
                             "seg_train/seg_train and seg_test/seg_test), one folder per class")
    parser.add_argument("--method", choices=("scratch", "augment"), default="scratch",
                        help="scratch: small CNN on rescaled images; augment: wide CNN on "
                             "ImageDataGenerator batches (default scratch)")
    parser.add_argument("--epochs", type=int, default=30, help="maximum epochs (default 30)")
    parser.add_argument("--patience", type=int, default=3,
                        help="early stopping on val_loss after this many epochs without "
                             "improvement; 0: no early stopping (default 3, the notebook's)")
    parser.add_argument("--batch-size", type=int, default=32, help="batch size (default 32)")
    parser.add_argument("--img-size", type=int, default=150,
                        help="images are resized to this square (default 150)")
    parser.add_argument("--seed", type=int, default=42,
                        help="seed for the split, initialisation and shuffling (default 42)")
    parser.add_argument("--json-out", type=Path, default=None,
                        help="also write the result JSON to this file")
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error(f"--epochs must be >= 1, got {args.epochs}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    result = run(args)
    text = json.dumps(result)
    if args.json_out is not None:
        args.json_out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
