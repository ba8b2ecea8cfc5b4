"""Write torchvision's CIFAR-10 folder (cifar-10-batches-py) from a decoded arrays file, so that upstream's
``datasets.CIFAR10(data_path, ...)`` reads it unchanged.

usage: python reproduction/device/cifar10_folder.py ARRAYS.npz DATA_PATH
ARRAYS.npz: train_images uint8 [50000, 32, 32, 3] (official order), train_labels, test_images, test_labels
(see .data/cifar10_jpeg_decode.py). Writes DATA_PATH/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}.
"""

import pickle
import sys
from pathlib import Path

import numpy as np

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def write(arrays: str, data_path: str) -> Path:
    d = np.load(arrays)
    out = Path(data_path) / "cifar-10-batches-py"
    out.mkdir(parents=True, exist_ok=True)

    def batch(name: str, images: np.ndarray, labels: np.ndarray) -> None:
        flat = np.ascontiguousarray(images.transpose(0, 3, 1, 2)).reshape(len(images), -1)  # CHW rows, as released
        with open(out / name, "wb") as f:
            pickle.dump({"data": flat, "labels": [int(y) for y in labels]}, f)

    for i, rows in enumerate(np.array_split(np.arange(len(d["train_labels"])), 5)):  # 10,000 each for CIFAR-10
        batch(f"data_batch_{i + 1}", d["train_images"][rows], d["train_labels"][rows])
    batch("test_batch", d["test_images"], d["test_labels"])
    with open(out / "batches.meta", "wb") as f:
        pickle.dump({"label_names": CLASSES}, f)
    return out


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    print(f"wrote {write(sys.argv[1], sys.argv[2])}")
