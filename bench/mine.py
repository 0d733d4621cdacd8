"""Training pairs mined from git history: a commit's message -> the files and functions it
changed at its parent. Writes JSON lines in the shape of bench/localization.py's
instances (id, repo, commit = the parent, query, gold_files, gold_functions, patch), so
that the same benches run on them. Prints one JSON object (counts per repository and
why commits were left out).

From each repository's mirror (`fetch` github:OWNER/NAME into /work/.mirror), every commit
with one parent is a candidate; kept when:
- its message says something: subject and body of at least MIN_WORDS words, the subject
  not a release, merge, revert, dependency bump, changelog, typo, formatting or lint
  change (SKIP_SUBJECT);
- its change is small and focused: 1-MAX_SOURCE_FILES source files of one language (not
  tests, docs or examples), at most MAX_CHANGED_LINES lines added and removed in them, no
  renames;
- it edits 1-MAX_FUNCTIONS functions that exist at the parent (bench/gold.py: the same
  rule as SWE-bench's edited functions; outside Python, codevm's tree-sitter extractor
  finds the functions).
The messages are cleaned of trailers (Signed-off-by and the like) and of the "(#123)"
that GitHub appends. Identical messages are kept once. The SWE-bench Lite repositories
are refused: they are for evaluation only. Each pair says its `language`.

    python bench/mine.py [--repo OWNER/NAME ...] [--out FILE] [--per-repo N]
"""

from __future__ import annotations

import argparse
import json
import random
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from gold import CODE_LANGUAGES, edited_functions  # noqa: E402
from localization import DATA, mirror_for  # noqa: E402

from codevm.indexers.languages import detect_language  # noqa: E402

# repositories outside SWE-bench, of several sizes, domains and languages: Python first
# (the ranker's training set), then Go, Rust, JavaScript/TypeScript, Java, C and Ruby
REPOS = ("pallets/click", "pallets/werkzeug", "encode/httpx", "python-attrs/attrs", "tornadoweb/tornado",
         "marshmallow-code/marshmallow", "networkx/networkx", "pypa/pip",
         "spf13/cobra", "gin-gonic/gin", "urfave/cli", "BurntSushi/ripgrep", "sharkdp/fd", "clap-rs/clap",
         "expressjs/express", "axios/axios", "vuejs/core", "google/gson", "apache/commons-lang",
         "jqlang/jq", "tmux/tmux", "sinatra/sinatra")
MIN_WORDS = 6
MAX_SOURCE_FILES = 3
MAX_CHANGED_LINES = 120
MAX_FUNCTIONS = 3
SKIP_SUBJECT = re.compile(
    r"^\W*(merge|bump|release|version|prepare|revert|back ?port|cherry|changelog|changes|news|"
    r"update (changelog|changes|docs?|readme|copyright|version|dependencies|deps|requirements)|"
    r"(fix(ed)? )?typos?|spelling|format|reformat|lint|style|black|isort|flake8|pre-commit|pyupgrade|"
    r"ruff|mypy|pylint|docs?\b|test(s|ing)?\b|ci\b|\[pre-commit|\[bot\]|auto|wip\b|vendor|upgrade|"
    r"chore|build\b|deps\b|rustfmt|clippy|gofmt|prettier|eslint|checkstyle|clang-format)", re.I)
TRAILER = re.compile(r"^\s*(signed-off-by|co-authored-by|reviewed-by|acked-by|cc|fixes|closes|see|refs?)"
                     r"\s*[:#].*$", re.I | re.M)
NOT_SOURCE = re.compile(r"(^|/)(tests?|testing|docs?|examples?|benchmarks?|benches|scripts?|tools|\.github|"
                        r"__tests__|spec|testdata|fixtures?|vendor|third_party)(/|$)|"
                        r"(^|/)(test_[^/]*|[^/]*_test|conftest|setup|noxfile|tasks)\.py$|"
                        r"(^|/)(Rakefile|Gemfile|Vagrantfile|[^/]*\.gemspec|[^/]*\.rake)$|"
                        r"(_tests?\.\w+|\.(test|spec)\.[cm]?[jt]sx?|Tests?\.java|_spec\.rb|\.d\.ts)$")


def clean(subject: str, body: str) -> str:
    subject, body = subject.replace("\r", ""), body.replace("\r", "")
    subject = re.sub(r"\s*\(#\d+\)\s*$", "", subject.strip())
    body = TRAILER.sub("", body).strip()
    body = re.sub(r"\n{3,}", "\n\n", body)
    return f"{subject}\n\n{body}".strip() if body else subject


def commits(git_dir: Path, why: Counter) -> list[dict]:
    """Every non-merge commit, newest first: sha, parent, subject, body, numstat rows. A
    mirror that lacks a blob (some leave large files out) ends its history there."""
    log = subprocess.run(
        ["git", f"--git-dir={git_dir}", "log", "--no-merges", "--no-renames", "--numstat",
         "--format=%x1e%H%x00%P%x00%ct%x00%s%x00%b%x00"], capture_output=True)
    records = log.stdout.decode("utf-8", "replace").split("\x1e")[1:]
    if log.returncode != 0:
        records = records[:-1]  # the commit whose diff could not be read, and all older ones
        why["history cut at a blob the mirror lacks"] += 1
    found = []
    for record in records:
        head, _, stats = record.rpartition("\x00")
        sha, parents, when, subject, body = (head.split("\x00") + [""] * 5)[:5]
        rows = []
        for line in stats.strip().splitlines():
            parts = line.split("\t")
            if len(parts) == 3:
                added, removed, path = parts
                rows.append((int(added) if added.isdigit() else -1, int(removed) if removed.isdigit() else -1, path))
        found.append({"sha": sha, "parents": parents.split(), "time": int(when or 0), "subject": subject,
                      "body": body, "files": rows})
    return found


def family(path: str) -> str:
    """A source file's language, TypeScript's dialects as one (a .ts and a .tsx change together)."""
    language = detect_language(path)
    return "typescript" if language == "tsx" else language


def keep(commit: dict, why: Counter) -> list[str] | None:
    """The commit's source files when it passes the filters (see the module)."""
    if len(commit["parents"]) != 1:
        why["not one parent"] += 1
        return None
    if SKIP_SUBJECT.search(commit["subject"]) or "typo" in commit["subject"].lower():
        why["subject says release, format, docs, tests ..."] += 1
        return None
    message = clean(commit["subject"], commit["body"])
    if len(re.findall(r"[A-Za-z]{2,}", message)) < MIN_WORDS:
        why["message too short"] += 1
        return None
    source = [(a, r, p) for a, r, p in commit["files"]
              if detect_language(p) in CODE_LANGUAGES and not NOT_SOURCE.search(p)]
    if not 1 <= len(source) <= MAX_SOURCE_FILES:
        why["no or too many source files"] += 1
        return None
    if len({family(p) for _, _, p in source}) > 1:
        why["source files of several languages"] += 1
        return None
    if any(a < 0 for a, _, _ in source) or sum(a + r for a, r, _ in source) > MAX_CHANGED_LINES:
        why["change too big (or binary)"] += 1
        return None
    if "=>" in " ".join(p for _, _, p in commit["files"]):
        why["a rename"] += 1
        return None
    return [p for _, _, p in source]


def mine(repo: str, mirrors: Path, per_repo: int, why: Counter) -> list[dict]:
    git_dir = mirror_for(mirrors, repo)
    rows: list[dict] = []
    seen: set[str] = set()
    for commit in commits(git_dir, why):
        files = keep(commit, why)
        if files is None:
            continue
        query = clean(commit["subject"], commit["body"])
        if query.lower() in seen:
            why["same message as another"] += 1
            continue
        parent = commit["parents"][0]
        patch = subprocess.run(["git", f"--git-dir={git_dir}", "diff", "--no-renames", parent, commit["sha"],
                                "--", *files], capture_output=True).stdout.decode("utf-8", "replace")
        instance = {"id": f"{repo.replace('/', '__')}@{commit['sha'][:12]}", "repo": repo, "commit": parent,
                    "fix": commit["sha"], "time": commit["time"], "language": family(files[0]), "query": query,
                    "gold_files": sorted(files), "patch": patch}
        functions = edited_functions(git_dir, instance, CODE_LANGUAGES)
        if not 1 <= len(functions) <= MAX_FUNCTIONS:
            why["edits no function, or too many"] += 1
            continue
        seen.add(query.lower())
        instance["gold_functions"] = functions
        rows.append(instance)
        if per_repo and len(rows) >= per_repo:
            break
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", action="append", help="OWNER/NAME (repeatable; default: REPOS)")
    parser.add_argument("--mirrors", type=Path, default=Path("/work/.mirror"))
    parser.add_argument("--out", type=Path, default=HERE / ".cache" / "mined.jsonl")
    parser.add_argument("--per-repo", type=int, default=0, help="at most N pairs of each (newest first)")
    args = parser.parse_args()
    evaluation = {json.loads(line)["repo"] for line in DATA.read_text().splitlines() if line.strip()}
    repos = args.repo or list(REPOS)
    refused = [r for r in repos if r in evaluation]
    if refused:
        raise SystemExit(f"{', '.join(refused)}: SWE-bench Lite repositories are for evaluation only")
    why: Counter = Counter()
    counts: dict[str, int] = {}
    languages: Counter = Counter()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w") as out:
        for repo in repos:
            if not mirror_for(args.mirrors, repo).exists():
                counts[repo] = -1  # no mirror: fetch github:OWNER/NAME first
                continue
            rows = mine(repo, args.mirrors, args.per_repo, why)
            rows.sort(key=lambda r: r["time"])  # oldest first: each checkout moves forward
            for row in rows:
                out.write(json.dumps(row) + "\n")
            counts[repo] = len(rows)
            languages.update(row["language"] for row in rows)
    print(json.dumps({"pairs": sum(c for c in counts.values() if c > 0), "per_language": dict(languages.most_common()),
                      "per_repository": counts,
                      "left_out": dict(why.most_common()), "out": str(args.out),
                      "sample": random.Random(1).sample([json.loads(x)["query"][:120] for x in
                                                         args.out.read_text().splitlines()], 5)
                      if args.out.stat().st_size else []}))


if __name__ == "__main__":
    main()
