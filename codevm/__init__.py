"""codevm: virtual memory for code assistants."""

import os

# numpy's BLAS (OpenBLAS) would spread the vector signal's one matrix-vector product over
# a thread pool that contends with torch's and DuckDB's threads: on 2 cores the ranking's
# p95 was 118 ms that way and 36 ms on one thread (bench/embeddings.py). It must be set
# before numpy is first imported; a value set by the user wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

__version__ = "0.1.0"
