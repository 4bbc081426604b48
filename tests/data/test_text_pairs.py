"""Sentence-pair readers (STS-B, pair TSVs, NLI, the hub), STS as duplicate retrieval, sentence draws."""

import pytest
from datasets import Dataset

from ncl_ext.data.text_pairs import (
    duplicate_retrieval,
    load_hub_pairs,
    load_sts_benchmark,
    read_nli_triplets,
    read_pairs_tsv,
    read_sts_csv,
    sample_sentences,
    sts_positive_pairs,
)
from tests.fake_data import write_sts


def sts(rows):
    first, second, score = zip(*rows)
    return Dataset.from_dict({"sentence1": list(first), "sentence2": list(second), "score": list(score)})


def test_duplicate_retrieval_links_both_sentences_of_each_positive_pair():
    dev = sts([
        ("a cat sits", "the cat sits", 4.8),   # positive: both directions
        ("a cat sits", "a cat is sitting", 4.0),  # exactly at min_score: positive; "a cat sits" gets two partners
        ("a dog runs", "a car drives", 1.0),   # negative: both sentences stay in the corpus only
        ("same", "same", 5.0),                 # a sentence with itself is not a duplicate task
        ("the cat sits", "a dog runs", 3.9),   # just below min_score
    ])
    queries, corpus, relevant = duplicate_retrieval(dev, min_score=4.0)
    assert corpus == {
        "0": "a cat sits", "1": "the cat sits", "2": "a cat is sitting", "3": "a dog runs", "4": "a car drives",
        "5": "same",
    }
    assert queries == {"0": "a cat sits", "1": "the cat sits", "2": "a cat is sitting"}
    assert relevant == {"0": {"1", "2"}, "1": {"0"}, "2": {"0"}}
    lower = duplicate_retrieval(dev, min_score=3.9)[2]
    assert lower["1"] == {"0", "3"} and lower["3"] == {"1"}


def test_duplicate_retrieval_rejects_bad_min_score_and_empty_tasks():
    dev = sts([("a", "b", 1.0)])
    with pytest.raises(ValueError, match=r"min_score must be in \[0, 5\]"):
        duplicate_retrieval(dev, min_score=7)
    with pytest.raises(ValueError, match="no pair of two different sentences"):
        duplicate_retrieval(dev, min_score=4.0)


def test_sample_sentences_draws_distinct_sentences_of_all_columns_with_a_seed():
    pairs = Dataset.from_dict({"anchor": [f"a{i}" for i in range(100)], "positive": [f"p{i}" for i in range(100)]})
    drawn = sample_sentences(pairs, 30, seed=0)
    assert len(set(drawn)) == 30 and set(drawn) <= set(pairs["anchor"]) | set(pairs["positive"])
    assert drawn == sample_sentences(pairs, 30, seed=0) and drawn != sample_sentences(pairs, 30, seed=1)
    assert any(text.startswith("p") for text in drawn) and max(int(text[1:]) for text in drawn) >= 50
    repeated = Dataset.from_dict({"anchor": ["x", "x", "y"], "positive": ["y", "z", "x"]})
    assert sorted(sample_sentences(repeated, 10)) == ["x", "y", "z"]  # capped at the distinct sentences
    with pytest.raises(ValueError, match="count must be an int >= 1"):
        sample_sentences(pairs, 0)


def test_read_sts_csv_keeps_quotes_and_filters_positive_pairs(tmp_path):
    rows = [(5.0, 'a man says "hi"', "a man says hi"), (1.2, "a cat", "a dog"), (4.0, "x's", 'y "z')]
    write_sts(tmp_path / "sts.csv", rows)
    sts = read_sts_csv(tmp_path / "sts.csv")
    assert sts["sentence1"] == [r[1] for r in rows] and sts["sentence2"] == [r[2] for r in rows]
    assert sts["score"] == [5.0, 1.2, 4.0]
    pairs = sts_positive_pairs(sts, min_score=4.0)
    assert pairs.column_names == ["anchor", "positive"]
    assert pairs["anchor"] == ['a man says "hi"', "x's"]


def test_read_sts_csv_rejects_malformed_rows(tmp_path):
    (tmp_path / "short.csv").write_text("genre\tfile\t2012\t0001\t4.0\tonly one sentence\n")
    with pytest.raises(ValueError, match=r"short.csv:1: expected 7"):
        read_sts_csv(tmp_path / "short.csv")
    write_sts(tmp_path / "bad.csv", [(4.0, "a", "b"), ("high", "c", "d")])
    with pytest.raises(ValueError, match=r"bad.csv:2: the score column holds 'high'"):
        read_sts_csv(tmp_path / "bad.csv")
    write_sts(tmp_path / "range.csv", [(7.5, "a", "b")])
    with pytest.raises(ValueError, match="outside"):
        read_sts_csv(tmp_path / "range.csv")
    with pytest.raises(FileNotFoundError):
        read_sts_csv(tmp_path / "missing.csv")


def test_read_pairs_tsv_and_nli_triplets(tmp_path):
    (tmp_path / "pairs.tsv").write_text('anchor\tpositive\na "q"\ta doc\nb\tc\n')
    pairs = read_pairs_tsv(tmp_path / "pairs.tsv")
    assert pairs["anchor"] == ['a "q"', "b"] and pairs["positive"] == ["a doc", "c"]
    (tmp_path / "bad.tsv").write_text("one\ttwo\tthree\n")
    with pytest.raises(ValueError, match="bad.tsv:1: expected 2"):
        read_pairs_tsv(tmp_path / "bad.tsv")
    nli = "split\tdataset\tfilename\tsentence1\tsentence2\tlabel\n" + "\n".join(
        [
            "train\tSNLI\tx\tP1\tE1\tentailment",
            "train\tSNLI\tx\tP1\tC1\tcontradiction",
            "train\tSNLI\tx\tP1\tE2\tentailment",
            "train\tSNLI\tx\tP1\tN1\tneutral",
            "train\tSNLI\tx\tP2\tE3\tentailment",  # no contradiction: skipped
            "dev\tSNLI\tx\tP3\tE4\tentailment",
            "dev\tSNLI\tx\tP3\tC4\tcontradiction",
        ]
    )
    (tmp_path / "nli.tsv").write_text(nli + "\n")
    triplets = read_nli_triplets(tmp_path / "nli.tsv")
    assert list(zip(triplets["anchor"], triplets["positive"], triplets["negative"])) == [
        ("P1", "E1", "C1"),
        ("P1", "E2", "C1"),
    ]


def test_load_hub_pairs_selects_and_renames_columns_of_a_local_dataset(tmp_path):
    (tmp_path / "train.csv").write_text("question,answer,id\nwho plays,a man plays,1\nwho runs,a dog runs,2\n")
    pairs = load_hub_pairs(str(tmp_path), split="train", columns=["question", "answer"])
    assert pairs.column_names == ["anchor", "positive"]
    assert list(pairs["anchor"]) == ["who plays", "who runs"]
    assert list(pairs["positive"]) == ["a man plays", "a dog runs"]
    with pytest.raises(ValueError, match=r"columns \['title'\] are not in"):
        load_hub_pairs(str(tmp_path), split="train", columns=["title"])


def test_load_sts_benchmark_reads_both_files_and_says_where_to_point_data_root(tmp_path):
    with pytest.raises(FileNotFoundError, match="pass --data-root DIR, where DIR holds sts-train.csv and sts-dev.csv"):
        load_sts_benchmark(None)
    write_sts(tmp_path / "sts-train.csv", [(4.5, "a", "b")])
    with pytest.raises(FileNotFoundError, match="lacks sts-dev.csv"):
        load_sts_benchmark(tmp_path)
    write_sts(tmp_path / "sts-dev.csv", [(1.0, "c", "d"), (2.0, "e", "f")])
    train, dev = load_sts_benchmark(tmp_path)
    assert (len(train), len(dev)) == (1, 2) and dev["sentence2"] == ["d", "f"]
