"""Tiny datasets written in the exact on-disk formats the loaders read (CIFAR pickles, ImageFolder PNGs, STS-B)."""

import csv
import pickle

import numpy as np
from PIL import Image


def write_cifar(root, name, train_sizes, test_size, num_classes, seed=0):
    """Tiny CIFAR copy in the published python-batch format; returns the HWC images and labels written."""
    rng = np.random.default_rng(seed)
    folder = root / ("cifar-10-batches-py" if name == "cifar10" else "cifar-100-python")
    folder.mkdir(parents=True)
    label_key = "labels" if name == "cifar10" else "fine_labels"
    written = {}

    def write_batch(file, size):
        hwc = rng.integers(0, 256, (size, 32, 32, 3), dtype=np.uint8)
        labels = rng.integers(0, num_classes, size).tolist()
        # each row: 1024 red values, then green, then blue, each in row-major order
        batch = {
            "batch_label": file,
            "data": hwc.transpose(0, 3, 1, 2).reshape(size, 3072),
            label_key: labels,
            "filenames": [f"{i}.png" for i in range(size)],
        }
        if name == "cifar100":
            batch["coarse_labels"] = [label // 5 for label in labels]
        with open(folder / file, "wb") as handle:
            pickle.dump(batch, handle, protocol=2)
        written[file] = (hwc, labels)

    train_files = [f"data_batch_{i}" for i in range(1, 6)] if name == "cifar10" else ["train"]
    for file, size in zip(train_files, train_sizes, strict=True):
        write_batch(file, size)
    write_batch("test_batch" if name == "cifar10" else "test", test_size)
    names = [f"class_{i}" for i in range(num_classes)]
    meta = (
        {"label_names": names, "num_cases_per_batch": 4}
        if name == "cifar10"
        else {"fine_label_names": names, "coarse_label_names": names[:20]}
    )
    with open(folder / ("batches.meta" if name == "cifar10" else "meta"), "wb") as handle:
        pickle.dump(meta, handle, protocol=2)
    return folder, written, train_files, names


def write_png_tree(root, splits, classes, per_class=1, size=(10, 12)):
    rng = np.random.default_rng(0)
    for split in splits:
        for name in classes:
            (root / split / name).mkdir(parents=True)
            for index in range(per_class):
                pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{index}.png")


def python2_cifar_pickle(content):
    """``content`` (a dict of str keys to uint8 2-D arrays, lists of ints or strs, strs, ints) pickled as the
    published CIFAR batches are: protocol 2 written by Python 2 with numpy 1.x, i.e. strings as byte strings
    (SHORT_BINSTRING / BINSTRING) and arrays through ``numpy.core.multiarray._reconstruct``."""
    import struct

    def string(text):
        data = text.encode("latin1") if isinstance(text, str) else bytes(text)
        return (b"U" + bytes([len(data)]) if len(data) < 256 else b"T" + struct.pack("<I", len(data))) + data

    def integer(value):
        return b"K" + bytes([value]) if 0 <= value < 256 else b"J" + struct.pack("<i", value)

    def value(item):
        if isinstance(item, np.ndarray):
            assert item.dtype == np.uint8 and item.ndim == 2
            return (
                b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + integer(0) + b"\x85" + string("b")
                + b"\x87R("  # _reconstruct(ndarray, (0,), 'b'), then its state:
                + integer(1) + integer(item.shape[0]) + integer(item.shape[1]) + b"\x86"  # version 1, shape
                + b"cnumpy\ndtype\n" + string("u1") + integer(0) + integer(1) + b"\x87R("  # dtype('u1', 0, 1)
                + integer(3) + string("|") + b"NNN" + integer(-1) + integer(-1) + integer(0) + b"tb"  # dtype state
                + b"\x89" + string(item.tobytes()) + b"tb"  # not Fortran order, the raw bytes
            )
        if isinstance(item, list):
            return b"](" + b"".join(value(element) for element in item) + b"e"
        return integer(item) if isinstance(item, int) else string(item)

    body = b"".join(string(key) + value(item) for key, item in content.items())
    return b"\x80\x02}(" + body + b"u."


def write_pairs(folder, count=30, size=12):
    """Coloured squares: class = colour; returns the CSV path and the pixel arrays."""
    colours = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}
    rows, pixels = [], []
    rng = np.random.default_rng(0)
    for i in range(count):
        name = list(colours)[i % 3]
        array = np.clip(np.array(colours[name]) + rng.integers(-25, 25, (size, size, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(array).save(folder / f"{i:03d}.png")
        (folder / f"{i:03d}.txt").write_text(f"a {name} square number {i}")
        rows.append({"image": f"{i:03d}.png", "caption": f"a {name} square", "label": name})
        pixels.append(array)
    path = folder / "pairs.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["image", "caption", "label"])
        writer.writeheader()
        writer.writerows(rows)
    return path, pixels


def write_sts(path, rows):
    """Rows ``(score, sentence1, sentence2)`` in the STS benchmark's original tab-separated layout."""
    lines = []
    for index, (score, first, second) in enumerate(rows):
        extra = "\tsource-a\tsource-b" if index % 3 == 0 else ""  # some original rows carry source columns
        lines.append(f"main-captions\tMSRvid\t2012test\t{index:04d}\t{score}\t{first}\t{second}{extra}")
    path.write_text("\n".join(lines) + "\n")


def sts_rows(count, seed):
    """Sentence pairs over the tiny vocabulary: paraphrases (high score) and unrelated pairs (low)."""
    from tests._tiny_models import WORDS

    generator = np.random.default_rng(seed)
    rows = []
    for index in range(count):
        words = list(generator.choice(WORDS, size=5))
        if index % 2 == 0:
            rows.append((4.0 + float(generator.uniform(0, 1)), " ".join(words), " ".join(words[1:] + ["and"])))
        else:
            other = list(generator.choice(WORDS, size=5))
            rows.append((float(generator.uniform(0, 2)), " ".join(words), " ".join(other)))
    return rows
