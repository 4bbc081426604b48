"""Speed and memory of ``ncl_ext.analysis`` on this machine; prints and saves a table.

    python benchmarks/analysis.py                      # every part, full sizes (~10 min on 2 cores)
    python benchmarks/analysis.py --quick              # smaller sizes, a smoke run
    python benchmarks/analysis.py --parts cold-start   # one or more parts; the others keep their saved figures

Parts (``--parts``, default all):

- ``report``: ``feature_report`` + ``retrieval_precision(k=10)`` on 10,000 x 2,048 features
  with 95% zeros and 100 classes (``sparse_class_features``): time, peak extra memory in a
  fresh process (peak RSS during the calls minus RSS before them), and the same precision@10
  by a plain per-sample loop (normalise once; per sample: one matrix-vector product, drop
  itself, top-10, compare labels) on 1,000 samples, scaled to all samples (median of three
  loop / fast pairs timed back to back);
- ``index``: ``SparseIndex.search`` vs a dense ``queries @ database.T`` + ``topk`` (blocks of
  ``2**25 // num_items`` queries, torch) on a 100,000 x 2,048 database with 1,000 queries
  at 95% and 99% zeros: build time, search time (best of ``--repeats``, the two methods
  timed alternately), speed-up, index size vs the dense float32 matrix, and the share of
  queries whose top-10 set equals the dense one. Database and queries are uniform-sparse:
  each entry non-zero with probability 5% (1%), value uniform in [0, 1), rows L2-normalised;
- ``cold-start``: first-call times in fresh processes with an empty ``NUMBA_CACHE_DIR`` (every
  numba loop compiled), for ``retrieval_precision`` alone, ``feature_report`` alone and both,
  on the ``report`` part's data; then the same in a new process with the cache filled, and a
  second call in the same process;
- ``engines``: exact ``SparseIndex`` against Seismic (``pyseismic-lsr``, approximate) and
  Qdrant (``qdrant-client`` in its local in-process mode ``QdrantClient(":memory:")``, sparse
  vectors) on the ``index`` part's 95%-zeros data: recall@10 against the exact top-10, build
  time, latency one query at a time and for 1,000 queries. Qdrant's local mode scores every
  stored vector in Python, so it runs on a subset (said in the table);
- ``theory``: the latent-class check of the NCL theory (CL vs NCL on ``LatentClassData``).

Torch and numba use ``--threads`` threads (default: all cores); every method, baselines and
engines included, runs with the same count. On a shared machine the load drifts: the load
average is printed with the results. Writes ``benchmarks/results/analysis.md`` and ``analysis.json``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numba
import numpy as np
import psutil
import torch
import torch.nn.functional as F

from ncl_ext.analysis import (
    LatentClassData,
    SparseIndex,
    cosine_top_k,
    feature_report,
    retrieval_precision,
    sparse_class_features,
)
from ncl_ext.analysis._sparse import to_csr
from ncl_ext.losses import InfoNCELoss

RESULTS = Path(__file__).parent / "results"
PARTS = ("report", "index", "cold-start", "engines", "theory")


def set_threads(threads: int) -> None:
    torch.set_num_threads(threads)
    numba.set_num_threads(threads)


def median_time(function: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def report_and_precision(features: torch.Tensor, labels: torch.Tensor) -> tuple[dict, float]:
    return feature_report(features, labels), retrieval_precision(features, labels, k=10)


def _memory_worker(path: str, threads: int, queue: multiprocessing.Queue) -> None:
    set_threads(threads)
    warm_up = sparse_class_features(300, dim=64, num_classes=5)  # imports and compiled kernels
    report_and_precision(*warm_up)
    features, labels = torch.load(path)
    process = psutil.Process()
    before = process.memory_info().rss
    peak = before
    import threading

    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, process.memory_info().rss)
            time.sleep(0.002)

    sampler = threading.Thread(target=sample)
    sampler.start()
    report_and_precision(features, labels)
    done.set()
    sampler.join()
    queue.put(max(peak, process.memory_info().rss) - before)


def extra_memory(features: torch.Tensor, labels: torch.Tensor, threads: int) -> int:
    """Peak extra RSS of feature_report + retrieval_precision, in a fresh process."""
    with tempfile.TemporaryDirectory() as folder:
        path = str(Path(folder) / "data.pt")
        torch.save((features, labels), path)
        context = multiprocessing.get_context("spawn")
        queue = context.Queue()
        worker = context.Process(target=_memory_worker, args=(path, threads, queue))
        worker.start()
        value = queue.get()
        worker.join()
    return value


def loop_precision(features: torch.Tensor, labels: torch.Tensor, num_queries: int, k: int = 10) -> float:
    """The plain way: one query at a time against all samples."""
    normalized = F.normalize(features, dim=1)
    hits = 0
    for n in range(num_queries):
        similarity = normalized @ normalized[n]
        similarity[n] = -torch.inf
        neighbours = similarity.topk(k).indices
        hits += int((labels[neighbours] == labels[n]).sum())
    return hits / (num_queries * k)


def bench_report(num_samples: int, loop_samples: int, repeats: int, threads: int) -> dict[str, Any]:
    features, labels = sparse_class_features(num_samples, dim=2048, num_classes=100, zero_fraction=0.95, seed=0)
    report_and_precision(features[:500], labels[:500])  # compile and import once
    report_time, report = median_time(lambda: feature_report(features, labels), repeats)
    precision_time, precision = median_time(lambda: retrieval_precision(features, labels, k=10), repeats)
    total_time, _ = median_time(lambda: report_and_precision(features, labels), repeats)
    # The load of a shared machine drifts: time the loop and the fast path back to back, three
    # times, and take the median of the per-pair speed-ups.
    speedups, loop_times = [], []
    for _ in range(3):
        loop_time, loop_value = median_time(lambda: loop_precision(features, labels, loop_samples), 1)
        fast_time, _ = median_time(lambda: retrieval_precision(features, labels, k=10), 1)
        loop_times.append(loop_time)
        speedups.append(loop_time * num_samples / loop_samples / fast_time)
    loop_time = statistics.median(loop_times)
    _, neighbours = cosine_top_k(features, None, k=10)  # what retrieval_precision averages
    fast_value = float((labels[neighbours[:loop_samples]] == labels[:loop_samples, None]).double().mean())
    scaled_loop = loop_time * num_samples / loop_samples
    return {
        "num_samples": num_samples,
        "zero_fraction": float((features == 0).float().mean()),
        "feature_report_s": report_time,
        "retrieval_precision_s": precision_time,
        "report_plus_precision_s": total_time,
        "extra_memory_mb": extra_memory(features, labels, threads) / 2**20,
        "loop_samples": loop_samples,
        "loop_s_measured": loop_time,
        "loop_s_scaled": scaled_loop,
        "precision_speedup_vs_loop": statistics.median(speedups),
        "precision_speedups_back_to_back": speedups,
        "precision@10": precision,
        "precision@10_first_samples_loop": loop_value,
        "precision@10_first_samples_fast": fast_value,
        "sparsity": report["sparsity"],
        "semantic_consistency": report["semantic_consistency"],
        "effective_rank": report["effective_rank"],
    }


def uniform_sparse(num_rows: int, dim: int, zero_fraction: float, seed: int) -> torch.Tensor:
    """Rows with each entry non-zero with probability ``1 - zero_fraction``, uniform in [0, 1), L2-normalised."""
    generator = torch.Generator().manual_seed(seed)
    rows = torch.empty(num_rows, dim)
    for start in range(0, num_rows, 10_000):
        block = rows[start : start + 10_000]
        values = torch.rand(block.shape, generator=generator)
        block.copy_(F.normalize(values * (torch.rand(block.shape, generator=generator) >= zero_fraction), dim=1))
    return rows


def index_data(num_items: int, num_queries: int, zero_fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    database = uniform_sparse(num_items, 2048, zero_fraction, seed=1)
    queries = uniform_sparse(num_queries, 2048, zero_fraction, seed=2)
    return database, queries


def dense_search(queries: torch.Tensor, database: torch.Tensor, k: int = 10) -> torch.Tensor:
    """The baseline: blocked ``queries @ database.T`` + ``topk``; returns the indices."""
    block_rows = max(1, 2**25 // database.shape[0])
    return torch.cat(
        [
            (queries[start : start + block_rows] @ database.T).topk(k, dim=1).indices
            for start in range(0, len(queries), block_rows)
        ]
    )


def same_sets(found: torch.Tensor, expected: torch.Tensor) -> float:
    return float(np.mean([set(a) == set(b) for a, b in zip(found.tolist(), expected.tolist(), strict=True)]))


def recall_at_k(found: list[list[int]], expected: torch.Tensor) -> float:
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(found, expected.tolist(), strict=True)]))


def bench_index(num_items: int, num_queries: int, zero_fraction: float, repeats: int) -> dict[str, Any]:
    database, queries = index_data(num_items, num_queries, zero_fraction)
    build_start = time.perf_counter()
    index = SparseIndex(database)
    build_time = time.perf_counter() - build_start
    index.search(queries[:10], 10)  # compiled kernel loaded
    dense_search(queries[:10], database)
    sparse_times, dense_times = [], []
    for _ in range(repeats):  # alternately, so that a change of machine load hits both
        start = time.perf_counter()
        sparse_scores, sparse_indices = index.search(queries, 10)
        sparse_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        dense_indices = dense_search(queries, database)
        dense_times.append(time.perf_counter() - start)
    exact = (queries.double() @ database.double().T).topk(10, dim=1).values if num_items <= 20_000 else None
    return {
        "num_items": num_items,
        "num_queries": num_queries,
        "zero_fraction": float((database == 0).float().mean()),
        "backend": index.backend,
        "build_s": build_time,
        "sparse_search_s": min(sparse_times),
        "dense_search_s": min(dense_times),
        "sparse_search_all_s": sparse_times,
        "dense_search_all_s": dense_times,
        "speedup": min(dense_times) / min(sparse_times),
        "index_mb": index.nbytes / 2**20,
        "dense_mb": index.dense_nbytes / 2**20,
        "size_ratio": index.dense_nbytes / index.nbytes,
        "same_top10_rows": same_sets(sparse_indices, dense_indices),
        "max_score_difference_vs_float64": None
        if exact is None
        else float((sparse_scores.double() - exact).abs().max()),
    }


COLD_START_SCRIPT = """
import json, sys, time
import torch, numba
torch.set_num_threads({threads}); numba.set_num_threads({threads})
from ncl_ext.analysis import feature_report, retrieval_precision, sparse_class_features
features, labels = sparse_class_features({num_samples}, dim=2048, num_classes=100, zero_fraction=0.95, seed=0)
calls = {{
    "precision": lambda: retrieval_precision(features, labels, k=10),
    "report": lambda: feature_report(features, labels),
    "both": lambda: (feature_report(features, labels), retrieval_precision(features, labels, k=10)),
}}
call = calls[sys.argv[1]]
times = []
for _ in range(2):
    start, start_cpu = time.perf_counter(), time.process_time()
    call()
    times.append((time.perf_counter() - start, time.process_time() - start_cpu))
print(json.dumps(times))
"""


def first_calls(which: str, cache_dir: str, num_samples: int, threads: int) -> tuple[list, list]:
    """(first call, second call) of ``which`` in a new process using ``cache_dir`` as numba cache.

    Each as ``[wall seconds, CPU seconds of the process]``: on a loaded machine the CPU time
    of the (single-threaded) compilation is the steadier figure.
    """
    environment = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    script = COLD_START_SCRIPT.format(threads=threads, num_samples=num_samples)
    output = subprocess.run(
        [sys.executable, "-c", script, which], env=environment, capture_output=True, text=True, check=True
    ).stdout
    first, second = json.loads(output.strip().splitlines()[-1])
    return first, second


def bench_cold_start(num_samples: int, threads: int) -> dict[str, Any]:
    results = {"num_samples": num_samples}
    for which in ("precision", "report", "both"):
        with tempfile.TemporaryDirectory() as cache_dir:
            cold, in_process = first_calls(which, cache_dir, num_samples, threads)
            cached, _ = first_calls(which, cache_dir, num_samples, threads)  # the cache filled by the first process
        results[which] = {
            "cold_s": cold[0],
            "cold_cpu_s": cold[1],
            "cached_s": cached[0],
            "cached_cpu_s": cached[1],
            "second_call_s": in_process[0],
            "second_call_cpu_s": in_process[1],
        }
    return results


def bench_engines(
    num_items: int, num_queries: int, qdrant_items: int, qdrant_queries: int, threads: int
) -> dict[str, Any]:
    database, queries = index_data(num_items, num_queries, 0.95)
    exact = dense_search(queries, database)
    latency_queries = min(100, num_queries)
    rows = [_sparse_index_row("", database, queries, exact, latency_queries)]
    rows += _seismic_rows(database, queries, exact, latency_queries, threads)
    subset_database, subset_queries = database[:qdrant_items], queries[:qdrant_queries]
    subset_exact = dense_search(subset_queries, subset_database)
    rows.append(_sparse_index_row("subset", subset_database, subset_queries, subset_exact, qdrant_queries))
    rows += _qdrant_rows(subset_database, subset_queries, subset_exact)
    return {"num_items": num_items, "rows": rows}


def _sparse_index_row(setting, database, queries, exact, latency_queries) -> dict[str, Any]:
    """Build time, one-query latency (mean of ``latency_queries``) and batch time of the exact SparseIndex."""
    start = time.perf_counter()
    index = SparseIndex(database, backend="inverted")
    build = time.perf_counter() - start
    index.search(queries[:10], 10)  # warm-up
    start = time.perf_counter()
    _, found = index.search(queries, 10)
    batch = time.perf_counter() - start
    start = time.perf_counter()
    for row in range(latency_queries):
        index.search(queries[row : row + 1], 10)
    single = (time.perf_counter() - start) / latency_queries
    recall = recall_at_k(found.tolist(), exact)
    return _engine_row(
        "ncl_ext SparseIndex (exact)", setting, len(database), len(queries), build, single, batch, recall
    )


def _engine_row(engine, setting, items, queries, build, single, batch, recall) -> dict[str, Any]:
    return {
        "engine": engine,
        "setting": setting,
        "items": items,
        "queries": queries,
        "build_s": build,
        "latency_one_query_ms": single * 1e3,
        "batch_s": batch,
        "batch_per_1000_s": batch * 1000 / queries,
        "recall@10": recall,
    }


def _seismic_rows(database, queries, exact, latency_queries, threads) -> list[dict[str, Any]]:
    try:
        import seismic
    except ImportError:
        return [{"engine": "Seismic", "setting": "not installed (pip install ncl_ext[retrieval])"}]
    string = seismic.get_seismic_string()
    database_csr, query_csr = to_csr(database), to_csr(queries)
    start = time.perf_counter()
    dataset = seismic.SeismicDataset()
    dataset.add_documents_by_id(
        [str(i) for i in range(database_csr.shape[0])],
        database_csr.indices.astype(np.int64),
        database_csr.data.astype(np.float32),
        database_csr.indptr.astype(np.int64),
    )
    index = seismic.SeismicIndex.build_from_dataset(dataset, num_threads=threads)
    build = time.perf_counter() - start
    ids = np.array([str(i) for i in range(query_csr.shape[0])], dtype=string)
    components = [np.array([str(d) for d in query_csr[i].indices], dtype=string) for i in range(query_csr.shape[0])]
    values = [query_csr[i].data.astype(np.float32) for i in range(query_csr.shape[0])]
    rows = []
    # query_cut / heap_factor: the values of Seismic's README example, then no query cut and no
    # heap slack (its most accurate setting).
    for query_cut, heap_factor in ((20, 0.8), (2048, 1.0)):
        start = time.perf_counter()
        results = index.batch_search(
            ids, components, values, k=10, query_cut=query_cut, heap_factor=heap_factor, num_threads=threads
        )
        batch = time.perf_counter() - start
        by_query = {result[0][0]: [int(hit[2]) for hit in result] for result in results if result}
        found = [by_query.get(str(i), []) for i in range(len(ids))]
        start = time.perf_counter()
        for i in range(latency_queries):
            index.search(str(i), components[i], values[i], 10, query_cut, heap_factor)
        single = (time.perf_counter() - start) / latency_queries
        rows.append(
            _engine_row(
                "Seismic (approximate)",
                f"query_cut={query_cut}, heap_factor={heap_factor}",
                database.shape[0],
                len(ids),
                build,
                single,
                batch,
                recall_at_k(found, exact),
            )
        )
    return rows


def _qdrant_rows(database, queries, exact) -> list[dict[str, Any]]:
    try:
        from qdrant_client import QdrantClient, models
    except ImportError:
        return [{"engine": "Qdrant", "setting": "not installed (pip install ncl_ext[retrieval])"}]

    def sparse_vector(csr, row):
        return models.SparseVector(indices=csr[row].indices.tolist(), values=csr[row].data.tolist())

    database_csr, query_csr = to_csr(database), to_csr(queries)
    client = QdrantClient(":memory:")
    start = time.perf_counter()
    client.create_collection("items", vectors_config={}, sparse_vectors_config={"sparse": models.SparseVectorParams()})
    points = [
        models.PointStruct(id=i, vector={"sparse": sparse_vector(database_csr, i)})
        for i in range(database_csr.shape[0])
    ]
    for first in range(0, len(points), 1000):
        client.upsert("items", points[first : first + 1000], wait=True)
    build = time.perf_counter() - start
    found = []
    start = time.perf_counter()
    for row in range(query_csr.shape[0]):
        response = client.query_points("items", query=sparse_vector(query_csr, row), using="sparse", limit=10)
        found.append([point.id for point in response.points])
    elapsed = time.perf_counter() - start
    client.close()
    per_query = elapsed / query_csr.shape[0]
    return [
        _engine_row(
            "Qdrant local mode (exact)",
            'QdrantClient(":memory:"), subset',
            database.shape[0],
            query_csr.shape[0],
            build,
            per_query,
            elapsed,
            recall_at_k(found, exact),
        )
    ]


def bench_theory() -> dict[str, Any]:
    data = LatentClassData(num_classes=10, anchors_per_class=3, input_dim=32, noise=0.5, seed=0)
    x, latent = data.sample(2000, seed=2)
    results = {}
    for name, nonneg in (("cl", None), ("ncl", "relu")):
        torch.manual_seed(0)
        model = torch.nn.Sequential(
            torch.nn.Linear(32, 128),
            torch.nn.ReLU(),
            torch.nn.Linear(128, 128),
            torch.nn.ReLU(),
            torch.nn.Linear(128, 32),
        )
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        loss_fn = InfoNCELoss(temperature=0.2, nonneg=nonneg)
        generator = torch.Generator().manual_seed(1)
        for _ in range(300):
            x1, x2, _ = data.positive_pairs(256, generator)
            loss = loss_fn(model(x1), model(x2))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            features = model(x)
        features = torch.relu(features) if nonneg else features
        report = feature_report(features, latent)
        results[name] = {
            key: report[key]
            for key in ("sparsity", "semantic_consistency", "correlation", "effective_rank", "dead_dims", "sepin@10")
        }
        results[name]["precision@10"] = retrieval_precision(features, latent, k=10)
    return results


def render(results: dict[str, Any]) -> str:
    lines = [
        "# ncl_ext.analysis benchmark",
        "",
        f"Run at {results['date']} on commit {results['commit']}; machine: {results['machine']}; "
        f"threads: {results['threads']} (torch and numba, every method); torch {results['torch']}, "
        f"numba {results['numba']}" + (" (--quick sizes)" if results["quick"] else "") + ".",
        "",
    ]
    if "report" in results:
        lines += _render_report(results["report"], results["repeats"])
    if "index" in results:
        lines += _render_index(results["index"])
    if "cold-start" in results:
        lines += _render_cold_start(results["cold-start"])
    if "engines" in results:
        lines += _render_engines(results["engines"])
    if "theory" in results:
        lines += _render_theory(results["theory"])
    return "\n".join(lines) + "\n"


def _render_report(report: dict[str, Any], repeats: int) -> list[str]:
    return [
        (
            f"## Feature report + precision@10 on {report['num_samples']:,} x 2,048 "
            f"({report['zero_fraction']:.1%} zeros, 100 classes)"
        ),
        "",
        f"{report['date']} (commit {report.get('commit', '?')}), load average {report['load']:.1f} "
        f"before the part; medians of {repeats} runs.",
        "",
        "| measure | value | target |",
        "|---|---|---|",
        f"| feature_report | {report['feature_report_s']:.2f} s | |",
        f"| retrieval_precision(k=10) | {report['retrieval_precision_s']:.2f} s | |",
        f"| both, one after the other | {report['report_plus_precision_s']:.2f} s | <= 5 s |",
        f"| peak extra memory | {report['extra_memory_mb']:.0f} MB | <= 2,048 MB |",
        f"| per-sample loop, {report['loop_samples']:,} samples (median of 3) | {report['loop_s_measured']:.1f} s | |",
        f"| per-sample loop scaled to {report['num_samples']:,} | {report['loop_s_scaled']:.1f} s | |",
        (
            f"| speed-up vs the loop (median of 3 back-to-back pairs: "
            f"{', '.join(f'{x:.0f}x' for x in report['precision_speedups_back_to_back'])}) "
            f"| {report['precision_speedup_vs_loop']:.0f}x | >= 100x |"
        ),
        "",
        (
            f"precision@10 = {report['precision@10']:.4f}; on the first {report['loop_samples']:,} samples the loop "
            f"gives {report['precision@10_first_samples_loop']:.4f} and the fast path "
            f"{report['precision@10_first_samples_fast']:.4f}; sparsity {report['sparsity']:.4f}, "
            f"semantic consistency {report['semantic_consistency']:.4f}, effective rank {report['effective_rank']:.1f}."
        ),
        "",
    ]


def _render_index(index: dict[str, Any]) -> list[str]:
    rows = index["rows"]
    lines = [
        (
            f"## SparseIndex vs dense matmul + topk ({rows[0]['num_items']:,} x 2,048 database, "
            f"{rows[0]['num_queries']:,} queries, k=10)"
        ),
        "",
        f"{index['date']} (commit {index.get('commit', '?')}), load average {index['load']:.1f} before the part; "
        f"best of {index['repeats']} alternate runs.",
        "",
        "| zeros | build | sparse search | dense search | speed-up | index / dense size | same top-10 as dense "
        "| target |",
        "|---|---|---|---|---|---|---|---|",
    ]
    targets = {0.95: ">= 8x", 0.99: ">= 50x"}
    for row, nominal in zip(rows, (0.95, 0.99), strict=True):
        lines.append(
            f"| {row['zero_fraction']:.2%} | {row['build_s']:.2f} s | {row['sparse_search_s']:.3f} s | "
            f"{row['dense_search_s']:.3f} s | {row['speedup']:.1f}x | {row['index_mb']:.0f} / {row['dense_mb']:.0f} MB "
            f"({row['size_ratio']:.1f}x smaller) | {row['same_top10_rows']:.1%} | {targets[nominal]} |"
        )
    lines += [
        "",
        "Database and queries: uniform-sparse non-negative rows, L2-normalised (see the script's docstring).",
        '"same top-10": share of queries whose top-10 set equals the dense float32 top-10 set. The index sums',
        "in float64 (exact up to float64 rounding) and breaks ties towards the lower item index; a difference",
        "could only come from float32 rounding of near-equal scores in the dense baseline. Build: from the",
        "dense float32 tensor (CSR conversion, CSC posting lists).",
        "",
    ]
    return lines


def _render_cold_start(cold: dict[str, Any]) -> list[str]:
    names = {
        "precision": "retrieval_precision(k=10)",
        "report": "feature_report",
        "both": "feature_report + retrieval_precision",
    }
    lines = [
        f"## Cold start ({cold['num_samples']:,} x 2,048, 95% zeros, 100 classes)",
        "",
        f"{cold['date']} (commit {cold.get('commit', '?')}), load average {cold['load']:.1f} before the part.",
        "Each row: fresh Python processes; time of the call(s) only (imports and data excluded),",
        "wall clock / CPU time of the process (all threads).",
        "",
        "| call | first call, empty numba cache | first call, cache filled | second call, same process | target |",
        "|---|---|---|---|---|",
    ]
    for key, name in names.items():
        row = cold[key]
        target = "<= 10 s cold" if key == "both" else ""
        lines.append(
            f"| {name} | {row['cold_s']:.1f} / {row['cold_cpu_s']:.1f} s | {row['cached_s']:.1f} / "
            f"{row['cached_cpu_s']:.1f} s | {row['second_call_s']:.2f} / {row['second_call_cpu_s']:.2f} s | {target} |"
        )
    lines += [
        "",
        "The retrieval side compiles two small numba loops (dense to CSR, the inverted-index search),",
        "plain `nogil` functions run on several threads instead of `parallel=True` ones, which take",
        "several times longer to compile. The rest of the figures is `feature_report`'s own work.",
        "",
    ]
    return lines


def _render_engines(engines: dict[str, Any]) -> list[str]:
    lines = [
        f"## Exact SparseIndex vs Seismic and Qdrant ({engines['num_items']:,} x 2,048, 95% zeros, k=10)",
        "",
        f"{engines['date']} (commit {engines.get('commit', '?')}), load average {engines['load']:.1f} before the part.",
        "",
        "| engine | setting | items | queries | build | one query at a time (mean) | all queries in one call "
        "| recall@10 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in engines["rows"]:
        if "items" not in row:
            lines.append(f"| {row['engine']} | {row['setting']} | | | | | | |")
            continue
        batch = f"{row['batch_s']:.3f} s"
        if row["queries"] != 1000:
            batch += f" (scaled: {row['batch_per_1000_s']:.1f} s per 1,000)"
        lines.append(
            f"| {row['engine']} | {row['setting']} | {row['items']:,} | {row['queries']:,} | {row['build_s']:.1f} s | "
            f"{row['latency_one_query_ms']:.2f} ms | {batch} | {row['recall@10']:.3f} |"
        )
    lines += [
        "",
        "Recall@10: share of the exact top-10 (dense float32 search over the same items) that an engine",
        "returns. Seismic: defaults of `SeismicIndex.build_from_dataset`, `batch_search` on the same threads;",
        "it is built for learned sparse representations (SPLADE-like: skewed, short queries), not for",
        'uniform-sparse data. Qdrant: `QdrantClient(":memory:")` is its in-process local mode (pure',
        "Python, scoring every stored vector per query), not the Qdrant server; it is timed on a",
        "subset, next to SparseIndex on the same subset. One-query latency includes each library's",
        "Python call overhead.",
        "",
    ]
    return lines


def _render_theory(theory: dict[str, Any]) -> list[str]:
    lines = [
        "## Latent-class check of the theory (MLP, InfoNCE, 300 steps; metrics against the latent classes)",
        "",
        "| run | sparsity | semantic consistency | correlation | effective rank | dead dims | SEPIN@10 "
        "| precision@10 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, row in theory.items():
        if not isinstance(row, dict):
            continue
        lines.append(
            f"| {name} | {row['sparsity']:.3f} | {row['semantic_consistency']:.3f} | {row['correlation']:.3f} | "
            f"{row['effective_rank']:.1f} | {row['dead_dims']} | {row['sepin@10']:.4f} | {row['precision@10']:.3f} |"
        )
    return lines + [""]


def commit() -> str:
    def git(*args: str) -> str:
        root = Path(__file__).parent.parent
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=root).stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    changed = git("status", "--porcelain", "--", "ncl_ext/analysis", "benchmarks/analysis.py")
    return head + (" + uncommitted changes to ncl_ext/analysis" if changed else "")


def stamp(part: dict[str, Any]) -> dict[str, Any]:
    part.setdefault("date", time.strftime("%Y-%m-%d %H:%M"))
    part.setdefault("load", psutil.getloadavg()[0])
    part.setdefault("commit", commit())
    return part


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument("--repeats", type=int, default=None, help="runs per timing (default 5, --quick 2)")
    parser.add_argument(
        "--threads", type=int, default=psutil.cpu_count(), help="torch and numba threads for every method"
    )
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="parts to run (default: all)")
    args = parser.parse_args()
    repeats = args.repeats or (2 if args.quick else 5)
    set_threads(args.threads)
    num_samples, loop_samples, num_items = (2_000, 200, 20_000) if args.quick else (10_000, 1_000, 100_000)
    json_path = RESULTS / "analysis.json"
    saved = json.loads(json_path.read_text(encoding="utf-8")) if json_path.exists() else {}
    results = {
        key: saved[key] for key in PARTS if key in saved and key not in args.parts and isinstance(saved[key], dict)
    }
    results.update(
        {
            "machine": f"{platform.processor() or platform.machine()}, {psutil.cpu_count()} cores",
            "threads": args.threads,
            "repeats": repeats,
            "quick": args.quick,
            "date": time.strftime("%Y-%m-%d %H:%M"),
            "commit": commit(),
            "torch": torch.__version__,
            "numba": numba.__version__,
        }
    )
    if "report" in args.parts:
        print("feature report + precision ...", flush=True)
        load = psutil.getloadavg()[0]
        results["report"] = stamp(bench_report(num_samples, loop_samples, repeats, args.threads) | {"load": load})
    if "index" in args.parts:
        print("sparse index ...", flush=True)
        load = psutil.getloadavg()[0]
        rows = [bench_index(num_items, 1_000, zeros, repeats) for zeros in (0.95, 0.99)]
        results["index"] = stamp({"rows": rows, "repeats": repeats, "load": load})
    if "cold-start" in args.parts:
        print("cold start ...", flush=True)
        load = psutil.getloadavg()[0]
        results["cold-start"] = stamp(bench_cold_start(num_samples, args.threads) | {"load": load})
    if "engines" in args.parts:
        print("engines ...", flush=True)
        load = psutil.getloadavg()[0]
        qdrant_items, qdrant_queries = (1_000, 20) if args.quick else (5_000, 50)
        results["engines"] = stamp(
            bench_engines(num_items, 1_000, qdrant_items, qdrant_queries, args.threads) | {"load": load}
        )
    if "theory" in args.parts:
        print("latent-class theory check ...", flush=True)
        results["theory"] = stamp(bench_theory())
    results["load_average_at_end"] = psutil.getloadavg()[0]
    table = render(results)
    print(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "analysis.md").write_text(table, encoding="utf-8")
    json_path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
