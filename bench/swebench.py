"""SWE-bench Lite localization and paging in one pass. Prints one JSON object.

Checks out, indexes and embeds each instance once for both benchmarks (which cost the
same per instance otherwise) and prints {"localization": ..., "paging": ...}, as
bench/localization.py and bench/paging.py would, sharing their cache. Same options.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import localization  # noqa: E402
import paging  # noqa: E402


def main() -> None:
    args = localization.bench_arguments(__doc__ or "")
    results, missing, seconds = localization.run_instances(args, [localization.LOCALIZATION, paging.PAGING])
    print(json.dumps({
        "localization": localization.summary(args, results[localization.LOCALIZATION.name]),
        "paging": paging.summary(results[paging.PAGING.name], {i["id"]: i for i in localization.selected(args)},
                                 localization.weights(localization.Settings())),
        "missing_repositories": missing,
        "index_seconds_this_run": round(seconds["index"], 1),
        "embed_seconds_this_run": round(seconds["embed"], 1)}))


if __name__ == "__main__":
    main()
