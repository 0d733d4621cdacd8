"""The graph signal: a personalised PageRank over the reference graph around the best
lexical and named hits: callees, callers, the enclosing class and sibling methods."""

from __future__ import annotations

from collections import defaultdict

import duckdb

from codevm.retrieval.fusion import Ranked, Scored
from codevm.retrieval.sql import definitions, quoted

GRAPH_SEEDS = 12
MAX_FANOUT = 8  # callees of one name / callers of one chunk followed
RESTART = 0.5  # personalised PageRank: the chance to jump back to a seed
ITERATIONS = 12
HOP_FRONTIER = 60  # nodes the second hop expands
GRAPH_MIN_WORDS = 8  # shorter queries are searches: the graph costs more than it brings
EDGE_WEIGHTS = {"callee": 1.0, "caller": 0.7, "class": 0.6, "sibling": 0.3}


def _neighbours(con: duckdb.DuckDBPyConnection, ids: list[int]) -> dict[int, list[tuple[int, str]]]:
    """Edges from each chunk of `ids`: its callees' definitions, its callers, its class
    and its sibling methods (in the same file). Each lookup scans `refs` once (a few ms
    on the standard library): the signal is for questions, not for every keystroke."""
    edges: dict[int, list[tuple[int, str]]] = defaultdict(list)
    if not ids:
        return edges
    nodes = con.execute(
        "SELECT id, path, name, qualified_name, kind FROM chunks WHERE id IN ("
        + ", ".join(str(int(i)) for i in ids) + ")").fetchall()
    by_def = {(path, qual): cid for cid, path, _, qual, _ in nodes if qual}
    by_name: dict[str, list[int]] = defaultdict(list)
    for cid, _, name, _, _ in nodes:
        if name:
            by_name[name].append(cid)
    # callees: calls made inside each chunk's definition, resolved by name (same file first)
    calls: dict[int, set[str]] = defaultdict(set)
    if by_def:
        for path, caller, name in con.execute(
                "SELECT path, caller, name FROM refs WHERE caller IN ("
                + quoted({q for _, q in by_def}) + ") AND kind = 'call'").fetchall():
            if (src := by_def.get((path, caller))) is not None:
                calls[src].add(name)
    callee_names = set().union(*calls.values()) if calls else set()
    defs: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for cid, name, _, path in definitions(con, callee_names, qualified=False):
        defs[name].append((cid, path))
    paths = {cid: path for cid, path, _, _, _ in nodes}
    for src, names in calls.items():
        for name in names:
            found = defs.get(name, [])
            local = [d for d, p in found if p == paths[src]]
            chosen = local or ([d for d, _ in found] if len(found) <= MAX_FANOUT else [])
            edges[src].extend((d, "callee") for d in chosen if d != src)
    # callers: the chunks that hold calls to each chunk's name (not too common a name)
    sites: dict[str, list[tuple[str, int]]] = defaultdict(list)
    if by_name:
        for name, path, line in con.execute(
                "SELECT name, path, line FROM refs WHERE name IN (" + quoted(set(by_name))
                + ") AND kind = 'call'").fetchall():
            sites[name].append((path, line))
    sites = {n: s for n, s in sites.items() if len(s) <= MAX_FANOUT * 4}
    owners = {cid: qual.split(".")[0] for cid, _, _, qual, kind in nodes if kind == "method"}
    files = {p for s in sites.values() for p, _ in s} | {paths[c] for c in owners}
    spans: dict[str, list[tuple[int, int, int, str, str]]] = defaultdict(list)
    if files:
        for cid, path, start, end, qual, kind in con.execute(
                "SELECT id, path, start_line, end_line, qualified_name, kind FROM chunks WHERE path IN ("
                + quoted(files) + ")").fetchall():
            spans[path].append((start, end, cid, qual or "", kind))
    for name, where in sites.items():
        for path, line in where:
            inner = [s for s in spans.get(path, []) if s[0] <= line <= s[1]]
            if not inner:
                continue
            caller = min(inner, key=lambda s: s[1] - s[0])[2]
            for dst in by_name[name]:
                if caller != dst:
                    edges[dst].append((caller, "caller"))
    # the enclosing class and sibling methods, in the same file
    for src, owner in owners.items():
        siblings = 0
        for _, _, cid, qual, kind in spans.get(paths[src], []):
            if cid == src:
                continue
            if qual == owner and kind == "class":
                edges[src].append((cid, "class"))
            elif qual.startswith(owner + ".") and siblings < MAX_FANOUT:
                siblings += 1
                edges[src].append((cid, "sibling"))
    return edges


def graph_signal(con: duckdb.DuckDBPyConnection, seeds: dict[int, float]) -> Ranked:
    """Personalised PageRank over the two-hop reference graph around `seeds` (id -> weight)."""
    if not seeds:
        return Ranked([])
    graph: dict[int, dict[int, float]] = defaultdict(dict)
    frontier = list(seeds)
    seen = set(frontier)
    for _hop in range(2):
        reach: dict[int, float] = defaultdict(float)
        for src, outs in _neighbours(con, frontier).items():
            for dst, kind in outs:
                w = EDGE_WEIGHTS[kind]
                # a walk goes both ways along a reference
                graph[src][dst] = max(graph[src].get(dst, 0.0), w)
                graph[dst][src] = max(graph[dst].get(src, 0.0), w)
                if dst not in seen:
                    reach[dst] += w * seeds.get(src, 1.0)
        # the second hop starts from the nodes the seeds reach most strongly
        frontier = sorted(reach, key=lambda n: (-reach[n], n))[:HOP_FRONTIER]
        seen.update(reach)
    total = sum(seeds.values()) or 1.0
    restart = {n: w / total for n, w in seeds.items()}
    out_weight = {n: sum(outs.values()) for n, outs in graph.items()}
    rank = dict(restart)
    for _ in range(ITERATIONS):
        nxt_rank: dict[int, float] = defaultdict(float)
        for node, mass in rank.items():
            weighted = graph.get(node)
            if not weighted:
                nxt_rank[node] += (1 - RESTART) * mass
                continue
            share = (1 - RESTART) * mass / out_weight[node]
            for dst, w in weighted.items():
                nxt_rank[dst] += share * w
        for node, w in restart.items():
            nxt_rank[node] += RESTART * w
        rank = nxt_rank
    # rounded, and ties by id: the same question ranks the same way every time
    return Ranked(sorted((Scored(n, round(s, 12), "related to the best hits") for n, s in rank.items()),
                         key=lambda r: (-r.score, r.chunk_id)))
