"""Sentence pairs for contrastive sentence embeddings, as ``datasets.Dataset`` tables.

Every reader returns the column layout ``SentenceTransformerTrainer`` and its losses expect:
``(anchor, positive)`` pairs or ``(anchor, positive, negative)`` triplets for training, and
``(sentence1, sentence2, score)`` for similarity evaluation.

- :func:`read_sts_csv`: the STS benchmark's original tab-separated files (``sts-train.csv``,
  ``sts-dev.csv``, ``sts-test.csv``; Cer et al., SemEval 2017) with columns genre, file,
  year, id, score (0..5), sentence1, sentence2 (some rows carry extra source columns). The
  sentences contain bare quote characters, so the files must be read with
  ``csv.QUOTE_NONE``.
- :func:`sts_positive_pairs`: the STS pairs scored at least ``min_score`` as positives.
- :func:`read_pairs_tsv`: a two-column TSV of (anchor, positive) pairs.
- :func:`read_nli_triplets`: NLI data (SNLI/MultiNLI, e.g. sentence-transformers'
  ``AllNLI.tsv.gz``) turned into (premise, entailed, contradicted) triplets.
- :func:`load_hub_pairs`: any Hugging Face dataset, with columns selected and renamed.
- :func:`duplicate_retrieval`: an STS split as a retrieval task (each sentence of a pair scored
  at least ``min_score`` must find its partner among all sentences of the split), in the
  ``(queries, corpus, relevant_docs)`` form of sentence-transformers' ``InformationRetrievalEvaluator``.
- :func:`sample_sentences`: distinct sentences of a pair dataset, drawn at random.
- :func:`load_sts_benchmark`: STS-B train and dev, from a folder of the original files or the hub.

Examples:
    >>> dev = read_sts_csv("stsbenchmark/sts-dev.csv")                   # doctest: +SKIP
    >>> dev.column_names                                                  # doctest: +SKIP
    ['sentence1', 'sentence2', 'score']
    >>> train = sts_positive_pairs(read_sts_csv("stsbenchmark/sts-train.csv"), min_score=4.0)  # doctest: +SKIP
    >>> train.column_names                                                # doctest: +SKIP
    ['anchor', 'positive']
"""

from __future__ import annotations

import csv
import gzip
import os
import random
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from datasets import Dataset

__all__ = [
    "STS_COLUMNS",
    "STS_FILES",
    "duplicate_retrieval",
    "load_hub_pairs",
    "check_sts_source",
    "load_sts_benchmark",
    "read_nli_triplets",
    "read_pairs_tsv",
    "read_sts_csv",
    "sample_sentences",
    "sts_positive_pairs",
]

#: The leading columns of the STS benchmark's original CSV files.
STS_COLUMNS: tuple[str, ...] = ("genre", "file", "year", "id", "score", "sentence1", "sentence2")
STS_MAX_SCORE = 5.0
#: The STS benchmark files a data root must hold: train and dev.
STS_FILES: tuple[str, ...] = ("sts-train.csv", "sts-dev.csv")


def read_sts_csv(path: str | os.PathLike) -> Dataset:
    """Read an original STS benchmark CSV into a ``(sentence1, sentence2, score)`` dataset.

    Args:
        path: e.g. ``stsbenchmark/sts-dev.csv``.

    Returns:
        A ``Dataset`` with the scores as floats on the original 0..5 scale.
    """
    sentences1, sentences2, scores = [], [], []
    with _open_text(path) as handle:
        for line, row in enumerate(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE), start=1):
            if len(row) < len(STS_COLUMNS):
                raise ValueError(
                    f"{path}:{line}: expected {len(STS_COLUMNS)} tab-separated columns "
                    f"({', '.join(STS_COLUMNS)}), got {len(row)}"
                )
            score = _parse_score(row[4], f"{path}:{line}")
            sentences1.append(row[5])
            sentences2.append(row[6])
            scores.append(score)
    if not scores:
        raise ValueError(f"{path} holds no STS pairs")
    return Dataset.from_dict({"sentence1": sentences1, "sentence2": sentences2, "score": scores})


def _parse_score(text: str, where: str) -> float:
    try:
        score = float(text)
    except ValueError:
        raise ValueError(f"{where}: the score column holds {text!r}, expected a number in [0, 5]") from None
    if not 0.0 <= score <= STS_MAX_SCORE:
        raise ValueError(f"{where}: score {score} is outside [0, 5]")
    return score


def sts_positive_pairs(sts: Dataset, min_score: float = 4.0) -> Dataset:
    """The pairs of an STS dataset scored at least ``min_score``, as ``(anchor, positive)``.

    STS scores run from 0 (unrelated) to 5 (equivalent); pairs scored 4 or more are
    paraphrases close enough to serve as positives for in-batch contrastive training.
    """
    if not 0.0 <= min_score <= STS_MAX_SCORE:
        raise ValueError(f"min_score must be in [0, 5], got {min_score!r}")
    kept = sts.filter(lambda score: score >= min_score, input_columns="score")
    if len(kept) == 0:
        raise ValueError(f"no STS pair is scored >= min_score={min_score}")
    return Dataset.from_dict({"anchor": list(kept["sentence1"]), "positive": list(kept["sentence2"])})


def duplicate_retrieval(
    sts: Dataset, min_score: float = 4.0
) -> tuple[dict[str, str], dict[str, str], dict[str, set[str]]]:
    """An STS split as duplicate retrieval: find a sentence's paraphrase partner among all its sentences.

    The corpus is every distinct sentence of the split (ids ``"0"``, ``"1"``, ... in order of first
    appearance); a query is a sentence that belongs to a pair scored at least ``min_score`` with
    a different sentence, and its relevant documents are those partners. A query's id is its
    corpus id, so a search should drop that hit (the query itself), as BEIR does.

    Returns:
        ``(queries, corpus, relevant_docs)``: ``{id: sentence}``, ``{id: sentence}`` and
        ``{query id: {corpus ids}}``, the arguments of ``InformationRetrievalEvaluator``.

    Examples:
        >>> sts = Dataset.from_dict({"sentence1": ["a cat", "a cat", "a dog"],
        ...                          "sentence2": ["the cat", "a car", "the dog"], "score": [4.5, 0.5, 3.0]})
        >>> queries, corpus, relevant = duplicate_retrieval(sts)
        >>> corpus
        {'0': 'a cat', '1': 'the cat', '2': 'a car', '3': 'a dog', '4': 'the dog'}
        >>> queries, relevant
        ({'0': 'a cat', '1': 'the cat'}, {'0': {'1'}, '1': {'0'}})
    """
    if not 0.0 <= min_score <= STS_MAX_SCORE:
        raise ValueError(f"min_score must be in [0, 5], got {min_score!r}")
    ids: dict[str, str] = {}
    for text in (text for pair in zip(sts["sentence1"], sts["sentence2"]) for text in pair):
        ids.setdefault(text, str(len(ids)))
    relevant: dict[str, set[str]] = defaultdict(set)
    for first, second, score in zip(sts["sentence1"], sts["sentence2"], sts["score"]):
        if score >= min_score and first != second:
            relevant[ids[first]].add(ids[second])
            relevant[ids[second]].add(ids[first])
    if not relevant:
        raise ValueError(f"no pair of two different sentences is scored >= min_score={min_score}")
    corpus = {cid: text for text, cid in ids.items()}
    queries = {qid: corpus[qid] for qid in sorted(relevant, key=int)}
    return queries, corpus, {qid: relevant[qid] for qid in queries}


def sample_sentences(pairs: Dataset, count: int, seed: int = 0) -> list[str]:
    """``count`` distinct sentences of all the columns of ``pairs``, drawn at random (all when there are fewer).

    A random draw, not the first rows: files such as STS-B train are sorted by genre.

    Examples:
        >>> pairs = Dataset.from_dict({"anchor": ["a", "b", "a"], "positive": ["c", "a", "d"]})
        >>> sorted(sample_sentences(pairs, 10))
        ['a', 'b', 'c', 'd']
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"count must be an int >= 1, got {count!r}")
    columns = [pairs[column] for column in pairs.column_names]
    sentences = list(dict.fromkeys(text for row in zip(*columns) for text in row))
    return random.Random(seed).sample(sentences, min(count, len(sentences)))


def read_pairs_tsv(path: str | os.PathLike) -> Dataset:
    """Read a TSV of ``anchor<TAB>positive`` lines (an ``anchor<TAB>positive`` header is skipped)."""
    anchors, positives = [], []
    with _open_text(path) as handle:
        for line, row in enumerate(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE), start=1):
            if not row:
                continue
            if len(row) != 2:
                raise ValueError(f"{path}:{line}: expected 2 tab-separated columns (anchor, positive), got {len(row)}")
            if line == 1 and row == ["anchor", "positive"]:
                continue
            anchors.append(row[0])
            positives.append(row[1])
    if not anchors:
        raise ValueError(f"{path} holds no sentence pairs")
    return Dataset.from_dict({"anchor": anchors, "positive": positives})


def read_nli_triplets(path: str | os.PathLike, split: str | None = "train") -> Dataset:
    """Turn an NLI TSV into ``(anchor, positive, negative)`` triplets.

    The file (plain or ``.gz``) has a header naming at least the columns ``sentence1``
    (premise), ``sentence2`` (hypothesis) and ``label`` (``entailment``, ``neutral`` or
    ``contradiction``), like sentence-transformers' ``AllNLI.tsv.gz``. Each entailed
    hypothesis of a premise becomes a positive, paired with one of that premise's
    contradictions (in turn) as a hard negative; premises lacking either are skipped.

    Args:
        path: the TSV file.
        split: keep only rows whose ``split`` column equals this (when the column exists);
            ``None`` keeps all rows.
    """
    entailed: dict[str, list[str]] = defaultdict(list)
    contradicted: dict[str, list[str]] = defaultdict(list)
    with _open_text(path) as handle:
        reader = csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        missing = {"sentence1", "sentence2", "label"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: the header lacks the column(s) {sorted(missing)}; found {reader.fieldnames}")
        for row in reader:
            if split is not None and row.get("split", split) != split:
                continue
            if row["label"] == "entailment":
                entailed[row["sentence1"]].append(row["sentence2"])
            elif row["label"] == "contradiction":
                contradicted[row["sentence1"]].append(row["sentence2"])
    anchors, positives, negatives = [], [], []
    for premise, hypotheses in entailed.items():
        contradictions = contradicted.get(premise)
        if not contradictions:
            continue
        for index, hypothesis in enumerate(hypotheses):
            anchors.append(premise)
            positives.append(hypothesis)
            negatives.append(contradictions[index % len(contradictions)])
    if not anchors:
        raise ValueError(f"{path} holds no premise with both an entailment and a contradiction")
    return Dataset.from_dict({"anchor": anchors, "positive": positives, "negative": negatives})


def load_hub_pairs(
    name: str,
    split: str = "train",
    subset: str | None = None,
    columns: Sequence[str] | None = None,
    renamed: Sequence[str] = ("anchor", "positive", "negative"),
) -> Dataset:
    """Load a Hugging Face dataset and keep ``columns`` renamed to ``renamed`` (in order).

    ``columns=None`` keeps the dataset's own columns. Use it for hub pair/triplet sets such as
    ``load_hub_pairs("sentence-transformers/all-nli", subset="triplet")``, or local
    ``datasets`` folders on air-gapped machines (``name`` may be a path).
    """
    from datasets import load_dataset

    dataset = load_dataset(name, subset, split=split)
    if columns is None:
        return dataset
    missing = [column for column in columns if column not in dataset.column_names]
    if missing:
        raise ValueError(f"columns {missing} are not in {name!r}; it has {dataset.column_names}")
    if len(columns) > len(renamed):
        raise ValueError(f"renamed needs a name for each of the {len(columns)} columns, got {list(renamed)}")
    dataset = dataset.select_columns(list(columns))
    return dataset.rename_columns({old: new for old, new in zip(columns, renamed) if old != new})


def check_sts_source(data_root: str | os.PathLike | None, hub_dataset: str | None = None) -> None:
    """Raise ``FileNotFoundError`` saying where to point ``--data-root`` unless STS-B can be read from it (or the hub).

    Recipes call it when their settings are built, so a missing data set stops a command before any work.
    """
    if data_root is None:
        if hub_dataset is None:
            raise FileNotFoundError(
                f"this recipe needs the STS benchmark: pass --data-root DIR, where DIR holds {' and '.join(STS_FILES)} "
                "(the original tab-separated STS-B files, e.g. ../shared/data/stsbenchmark), "
                "or, online, hub_dataset=sentence-transformers/stsb"
            )
        return
    root = Path(data_root)
    missing = [name for name in STS_FILES if not (root / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"--data-root {root} lacks {', '.join(missing)}; point it at the folder holding the STS benchmark's "
            f"{' and '.join(STS_FILES)} (e.g. ../shared/data/stsbenchmark)"
        )


def load_sts_benchmark(data_root: str | os.PathLike | None, hub_dataset: str | None = None) -> tuple[Dataset, Dataset]:
    """STS-B ``(train, dev)`` as ``(sentence1, sentence2, score)`` tables, scores on the original 0..5 scale.

    From ``data_root`` holding the original ``sts-train.csv`` and ``sts-dev.csv``, or, with no
    ``data_root``, from the hub dataset ``hub_dataset`` (e.g. ``sentence-transformers/stsb``,
    whose scores in [0, 1] are rescaled to 0..5). The error says where to point ``--data-root``.
    """
    check_sts_source(data_root, hub_dataset)
    if data_root is None:
        columns = ("sentence1", "sentence2", "score")
        splits = (load_hub_pairs(hub_dataset, split=split, columns=columns, renamed=columns)
                  for split in ("train", "validation"))
        rescale = {"function": lambda score: {"score": score * STS_MAX_SCORE}, "input_columns": "score"}
        train, dev = (split.map(**rescale) for split in splits)
        return train, dev
    train, dev = (read_sts_csv(Path(data_root) / name) for name in STS_FILES)
    return train, dev


def _open_text(path: str | os.PathLike) -> IO[str]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")
