"""Tokens a host spends to get to the right code, through codevm's MCP tools and without
them. Prints one JSON object.

On SWE-bench Lite (repositories at each instance's commit, as in localization.py), the
host's cheapest honest strategy with each tool set is simulated, and the tokens of what
each tool call returns are counted, until the code of the gold functions (the functions
the fix edits, at the base commit) has reached the host:

  context_for   codevm's context_for(issue, max_tokens), one call each at 2k, 4k, 8k, 16k
  search_read   codevm's search_code(issue) (its top hit comes with its code), then
                read_code of each further hit in order, paging on, until the gold is read
  grep_files    ripgrep for each code-like identifier and each rare word of the issue,
                files ranked by the number of distinct terms they match, each read whole
  grep_lines    the same ranking, but each file's matching lines with 20 lines of context

A function counts as reached when the returned text holds min(its lines, 40) of its
lines (a page of a whole definition holds all its lines; a class's outline, the lines it
shows as the file has them); an instance when all its gold functions are reached (`any`: one of them). What is
counted is the text a tool returns (the rendering a host reads), with codevm's token
estimate (characters / 3.6) for every strategy alike; tool listings of ripgrep count too.
Each strategy stops at 64k tokens; a median past it is reported as over the cap (and
the ratio to it as an upper bound). Instances whose gold functions are not in the index
(new functions only) count as not reached for every strategy.

    python bench/mcp_tokens.py [--limit N] [--repo R] [--embedder off|local]
"""

from __future__ import annotations

import json
import re
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

if "--embedder" not in sys.argv:  # dense vectors for 300 checkouts take hours on 2 cores
    sys.argv += ["--embedder", "off"]

from localization import Bench, bench_arguments, run_instances  # noqa: E402

from codevm.engine import Engine  # noqa: E402
from codevm.mcp_server import tools  # noqa: E402
from codevm.memory.budget import TokenEstimator  # noqa: E402

BUDGETS = (2000, 4000, 8000, 16000)
CAP = 64_000
NEED_LINES = 40
CONTEXT_LINES = 20
ESTIMATE = TokenEstimator()
VERSION = 11  # of the row format and the strategies (2: the learned ranker orders context_for;
# 3: context_for pages in the whole of a long definition for a part, and the lines an
# outline or a part shows as they are count as shown; 4: and a small class whole; 5: a whole
# within a share of the budget that follows the candidate's relevance, parts joined; 6, 7: experiments,
# reverted; 8: the named signal's ties in the order found, not by chunk id; 9: the search
# index compacted when a quarter of it is deleted chunks; 10: methods of one class bring the
# class, a whole's relevance the sum of its candidates'; 11: vendored code counts half in search)
GREP_SINCE = 2  # the grep baselines have not changed since this version: their rows are reused

STOP = set("""a an the and or but if then else when while for to of in on at by with from into
onto is are was were be been being this that these those it its as not no can could should would
will shall may might must do does did done have has had having i we you he she they them their our
your my me us what which who whom whose why how where there here than too very just also only
such some any all each every other more most less few many much same own so both either neither
get got use used using uses work works working like want need needs make makes made see seem
seems example expected actual result results issue bug error errors problem version versions
following instead however because since still already return returns returned value values
true false none null""".split())


def tokens(text: str) -> int:
    return ESTIMATE.count(text) if text else 0


class Gold:
    """The gold functions' line ranges, and what of them the host has been shown."""

    def __init__(self, spans: list[tuple[str, int, int]]):
        self.spans = spans
        self.seen: dict[str, set[int]] = {}

    def show(self, path: str, start: int, end: int) -> None:
        self.seen.setdefault(path, set()).update(range(start, end + 1))

    def show_lines(self, path: str, lines: set[int]) -> None:
        self.seen.setdefault(path, set()).update(lines)

    def reached(self) -> list[bool]:
        out = []
        for path, start, end in self.spans:
            need = min(end - start + 1, NEED_LINES)
            have = len(self.seen.get(path, set()) & set(range(start, end + 1)))
            out.append(have >= need)
        return out


def verbatim_lines(root: Path, path: str, start: int, end: int, text: str) -> set[int]:
    """The lines of `path` start..end that `text` (a class's outline, or a part of a long
    definition under its signature) shows as they are: its lines matched in order against
    the file's, and the blank lines that follow one."""
    try:
        lines = (root / path).read_text(encoding="utf-8", errors="replace").split("\n")[start - 1: end]
    except OSError:
        return set()
    shown = [line.rstrip() for line in text.split("\n") if line.strip()]
    matched: list[int] = []
    at = 0
    for line in shown:  # each at the next file line equal to it (a member's signature line is none)
        found = next((i for i in range(at, len(lines)) if lines[i].rstrip() == line), None)
        if found is not None:
            matched.append(start + found)
            at = found + 1
    out = set(matched)
    for number in matched:  # the blank lines after a shown one (an outline leaves them out)
        while number + 1 < start + len(lines) and not lines[number + 1 - start].strip():
            number += 1
            out.add(number)
    return out


def gold_spans(engine: Engine, functions: list[str]) -> list[tuple[str, int, int]]:
    spans = []
    for item in functions:
        path, _, name = item.partition("::")
        found = [d for d in engine.symbol(name, limit=200) if d.path == path]
        if found:
            spans.append((path, found[0].start_line, found[0].end_line))
    return spans


class Run:
    """One strategy on one instance: tokens returned so far, and when the gold came."""

    def __init__(self, spans: list[tuple[str, int, int]]):
        self.gold = Gold(spans)
        self.spent = 0
        self.all_at: int | None = None
        self.any_at: int | None = None

    def returned(self, text: str, shown: list[tuple[str, int, int]],
                 lines: list[tuple[str, set[int]]] = ()) -> None:
        """`text` returned, showing the whole of each range in `shown` and each file's `lines`."""
        self.spent += tokens(text)
        for path, start, end in shown:
            self.gold.show(path, start, end)
        for path, numbers in lines:
            self.gold.show_lines(path, numbers)
        reached = self.gold.reached()
        if reached and all(reached) and self.all_at is None:
            self.all_at = self.spent
        if any(reached) and self.any_at is None:
            self.any_at = self.spent

    @property
    def done(self) -> bool:
        return self.all_at is not None or self.spent >= CAP

    def row(self) -> dict:
        return {"all": self.all_at, "any": self.any_at, "spent": self.spent}


def context_for(engine: Engine, query: str, spans: list[tuple[str, int, int]]) -> dict:
    """One call per budget; tokens until reached: the first call whose text holds the gold."""
    best = Run(spans)
    for budget in BUDGETS:
        run = Run(spans)
        result, text = tools.context_for(engine, query, budget)
        run.returned(text, [(p["path"], p["start_line"], p["end_line"]) for p in result["pages"] if p["whole"]],
                     [(p["path"], verbatim_lines(engine.root, p["path"], p["start_line"], p["end_line"], p["code"]))
                      for p in result["pages"] if not p["whole"]])
        if best.all_at is None and run.all_at is not None:
            best.all_at = run.all_at
        if best.any_at is None and run.any_at is not None:
            best.any_at = run.any_at
        best.spent = run.spent
    return best.row()


def search_read(engine: Engine, query: str, spans: list[tuple[str, int, int]]) -> dict:
    run = Run(spans)
    offset = 0
    while not run.done and offset < 100:
        result, text = tools.search_code(engine, query, k=10, offset=offset)
        whole = [h for h in result["items"] if "code" in h
                 and h["code"].count("\n") + 1 >= h["end_line"] - h["start_line"] + 1]
        run.returned(text, [(h["path"], h["start_line"], h["end_line"]) for h in whole],
                     [(h["path"], verbatim_lines(engine.root, h["path"], h["start_line"], h["end_line"], h["code"]))
                      for h in result["items"] if "code" in h and h not in whole])
        for hit in result["items"]:
            if run.done:
                break
            if "code" in hit:
                continue
            code, read = tools.read_code(engine, chunk_id=hit["id"])
            span = (code["path"], code["start_line"], code["end_line"])
            if code["text"].count("\n") + 1 >= code["end_line"] - code["start_line"] + 1:
                run.returned(read, [span])
            else:
                run.returned(read, [], [(span[0], verbatim_lines(engine.root, *span, code["text"]))])
        if not result["has_more"]:
            break
        offset = result["next_offset"] or offset + 10
    return run.row()


IDENTIFIER = re.compile(r"`([^`\n]{2,80})`|\b([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)+|"
                        r"[A-Za-z_]*_[A-Za-z0-9_]+|[a-z]+[A-Z][A-Za-z0-9]*|[A-Z][a-z0-9]+[A-Z][A-Za-z0-9]*|"
                        r"[A-Za-z_][A-Za-z0-9_]*(?=\())")


def rg(root: Path, *args: str) -> str:
    done = subprocess.run(["rg", "--no-messages", *args], cwd=root, capture_output=True, text=True,
                          errors="replace", timeout=120)
    return done.stdout


def grep_terms(root: Path, issue: str, files: int) -> dict[str, list[str]]:
    """term -> the files that hold it: code-like identifiers, and words rare in the repository."""
    identifiers: set[str] = set()
    for quoted, bare in IDENTIFIER.findall(issue):
        for part in re.findall(r"[A-Za-z_][A-Za-z0-9_]{2,}", quoted or bare):
            if part.lower() not in STOP:
                identifiers.add(part)
    words = {w for w in re.findall(r"\b[A-Za-z]{4,}\b", issue) if w.lower() not in STOP} - identifiers
    rare_limit = max(5, files // 100)
    found: dict[str, list[str]] = {}
    for term in sorted(identifiers | words):
        hits = rg(root, "-l", "-F", "-w", "--", term).split()
        if hits and (term in identifiers or len(hits) <= rare_limit):
            found[term] = sorted(hits)
    return found


def grep_strategies(root: Path, issue: str, spans: list[tuple[str, int, int]], files: int) -> dict:
    terms = grep_terms(root, issue, files)
    listing = "\n".join(f"$ rg -l -w {t}\n" + "\n".join(hits[:50]) for t, hits in terms.items())
    score: dict[str, int] = {}
    for hits in terms.values():
        for path in hits:
            score[path] = score.get(path, 0) + 1
    ranked = sorted(score, key=lambda p: (-score[p], p))
    whole, lines = Run(spans), Run(spans)
    whole.returned(listing, [])
    lines.returned(listing, [])
    patterns = [a for t in terms for a in ("-e", t)]
    for path in ranked:
        if whole.done and lines.done:
            break
        if not whole.done:
            try:
                text = (root / path).read_text(encoding="utf-8", errors="replace")
            except OSError:
                text = ""
            whole.returned(text, [(path, 1, text.count("\n") + 1)])
        if not lines.done:
            out = rg(root, "-n", "-w", "-F", "-C", str(CONTEXT_LINES), *patterns, "--", path)
            shown = [(path, int(m), int(m)) for m in re.findall(r"^(\d+)[-:]", out, re.MULTILINE)]
            lines.returned(out, shown)
    return {"grep_files": whole.row(), "grep_lines": lines.row(), "terms": len(terms), "files_matched": len(ranked)}


GREP_DONE: dict[str, dict] = {}  # instance id -> the grep baselines' figures of an earlier row


def evaluate(instance: dict, engine: Engine) -> dict:
    spans = gold_spans(engine, instance["edited_functions"] or instance["gold_functions"])
    query = instance["query"][: 32_000]
    row: dict = {"id": instance["id"], "version": VERSION, "gold": len(spans)}
    if not spans:
        return row
    row["context_for"] = context_for(engine, query, spans)
    row["search_read"] = search_read(engine, query, spans)
    row.update(GREP_DONE.get(instance["id"]) or
               grep_strategies(engine.root, instance["query"], spans, engine.status().files))
    return row


STRATEGIES = ("context_for", "search_read", "grep_files", "grep_lines")


def summarize(rows: list[dict], which: str) -> dict:
    out: dict = {}
    n = len(rows)
    for name in STRATEGIES:
        at = [r[name][which] if name in r and r[name][which] is not None else None for r in rows]
        reached = sorted(a for a in at if a is not None)
        spent = [float(a) if a is not None else float("inf") for a in at]
        median = statistics.median(spent) if spent else None
        out[name] = {f"within_{b // 1000}k": round(sum(1 for a in reached if a <= b) / n, 3) for b in BUDGETS}
        out[name]["reached"] = round(len(reached) / n, 3)
        # past the cap for more than half the instances: the median is over CAP tokens
        out[name]["median_tokens"] = None if median is None or median == float("inf") else round(median)
        out[name]["median_over_cap"] = median == float("inf")
        out[name]["median_tokens_when_reached"] = round(statistics.median(reached)) if reached else None
    return out


def main() -> None:
    args = bench_arguments(__doc__ or "")
    earlier = args.cache / "mcp-tokens.jsonl"
    if earlier.exists() and not args.fresh:
        for line in earlier.read_text().splitlines():
            row = json.loads(line)
            if row.get("version", 0) >= GREP_SINCE and "grep_files" in row:
                GREP_DONE[row["id"]] = {k: row[k] for k in ("grep_files", "grep_lines", "terms", "files_matched")}
    bench = Bench("mcp-tokens", evaluate,
                  lambda r: " ".join(f"{k}={r[k]['all']}" for k in STRATEGIES if k in r) or "no gold in the index",
                  current=lambda r: r.get("version") == VERSION)
    results, missing, seconds = run_instances(args, [bench])
    rows = results[bench.name]
    out = {"instances": len(rows), "with_gold_in_index": sum(1 for r in rows if r.get("gold")),
           "embedder": args.embedder, "token_estimate": "characters / 3.6 (codevm's TokenEstimator)",
           "all_gold_functions": summarize(rows, "all"), "any_gold_function": summarize(rows, "any"),
           "missing_repositories": missing, "index_seconds_this_run": round(seconds["index"], 1)}
    best = min(("context_for", "search_read"), key=lambda s: -out["all_gold_functions"][s]["within_8k"])
    base = out["all_gold_functions"]["grep_files"]["median_tokens"]
    mine = out["all_gold_functions"][best]["median_tokens"]
    out["best_codevm_strategy"] = best
    if mine and base:
        out["median_ratio_to_grep_files"] = round(mine / base, 3)
    elif mine and out["all_gold_functions"]["grep_files"]["median_over_cap"]:
        out["median_ratio_to_grep_files_below"] = round(mine / CAP, 3)  # its median is over CAP
    print(json.dumps(out))


if __name__ == "__main__":
    main()
