"""datatrove's MinHash deduplication on the files the Rust benchmark wrote.

The four steps of its minhash pipeline (signatures, buckets, clusters, filter), one
task and one worker each as far as its executor allows (the buckets step runs one task
per band), with CodeLupe's parameters: 5-gram shingles, 32 bands x 8 rows = 256
hashes, 64-bit. Prints files/s over the whole pipeline and per step, and the number of
files it removed.

    python datatrove_minhash.py FILES.jsonl WORKDIR
"""

import gzip
import sys
import time
from pathlib import Path

from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.dedup.minhash import (
    MinhashConfig,
    MinhashDedupBuckets,
    MinhashDedupCluster,
    MinhashDedupFilter,
    MinhashDedupSignature,
)
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.writers import JsonlWriter
from datatrove.utils.hashing import HashConfig


def main():
    files, work = Path(sys.argv[1]), Path(sys.argv[2])
    config = MinhashConfig(
        n_grams=5,
        num_buckets=32,
        hashes_per_bucket=8,
        hash_config=HashConfig(precision=64),
    )
    count = sum(1 for _ in files.open())

    def reader():
        return JsonlReader(str(files.parent), glob_pattern=files.name, id_key="id", text_key="text")

    def executor(name, pipeline, tasks=1):
        return LocalPipelineExecutor(pipeline=pipeline, tasks=tasks, workers=1, logging_dir=str(work / "logs" / name))

    sigs, buckets, remove_ids = str(work / "sigs"), str(work / "buckets"), str(work / "remove_ids")
    steps = {
        "signatures": executor("sigs", [reader(), MinhashDedupSignature(output_folder=sigs, config=config)]),
        "buckets": executor(
            "buckets",
            [MinhashDedupBuckets(input_folder=sigs, output_folder=buckets, config=config)],
            tasks=config.num_buckets,
        ),
        "clusters": executor(
            "clusters", [MinhashDedupCluster(input_folder=buckets, output_folder=remove_ids, config=config)]
        ),
        "filter": executor(
            "filter",
            [reader(), MinhashDedupFilter(input_folder=remove_ids), JsonlWriter(str(work / "deduplicated"))],
        ),
    }
    total = 0.0
    for name, executor in steps.items():
        started = time.perf_counter()
        executor.run()
        took = time.perf_counter() - started
        total += took
        print(f"datatrove {name:<10} {count / took:>8.0f} files/s  ({took:.1f} s)")
    kept = 0
    for part in (work / "deduplicated").glob("*.jsonl*"):
        opener = gzip.open if part.suffix == ".gz" else open
        with opener(part, "rt") as f:
            kept += sum(1 for _ in f)
    print(f"datatrove whole pipeline, 1 worker: {count / total:>8.0f} files/s  {count - kept} near-duplicates removed")


if __name__ == "__main__":
    main()
