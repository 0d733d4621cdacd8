"""The graph signal: a personalised PageRank over the reference graph around the best
lexical and named hits: callees, callers, the enclosing class and sibling methods."""

from __future__ import annotations

from collections import defaultdict

import duckdb

from codevm.db.lexical import LexicalIndex
from codevm.retrieval.fusion import Ranked, Scored
from codevm.retrieval.sql import by_ids

GRAPH_SEEDS = 12
MAX_FANOUT = 8  # definitions of one callee / sibling methods of one chunk followed
MAX_CALLERS = 32  # a name called from more chunks is not followed to its callers
MAX_FILE_CHUNKS = 2000  # a file with more chunks is not read for a method's class and siblings
RESTART = 0.5  # personalised PageRank: the chance to jump back to a seed
ITERATIONS = 12
HOP_FRONTIER = 60  # nodes the second hop expands
GRAPH_MIN_WORDS = 8  # shorter queries are searches: the graph costs more than it brings
EDGE_WEIGHTS = {"callee": 1.0, "caller": 0.7, "class": 0.6, "sibling": 0.3}


Node = tuple[str, str, str, str, str]  # a chunk's path, name, qualified name, kind, calls


def _describe(con: duckdb.DuckDBPyConnection, ids: set[int], known: dict[int, Node]) -> None:
    """Read the chunks of `ids` that `known` lacks into it, in one query."""
    missing = sorted(i for i in ids if i not in known)
    if missing:
        where, params = by_ids(missing)
        for cid, *node in con.execute(
                f"SELECT id, path, name, qualified_name, kind, calls FROM chunks c {where}", params).fetchall():
            known[cid] = tuple(v or "" for v in node)  # type: ignore[assignment]


def _neighbours(con: duckdb.DuckDBPyConnection, lexical: LexicalIndex, ids: list[int],
                known: dict[int, Node]) -> dict[int, list[tuple[int, str]]]:
    """Edges from each chunk of `ids`: its callees' definitions, its callers, its class
    and its sibling methods (in the same file). The chunks of `ids` are read by id (`known`
    keeps them for the next hop); the names they call, their own names and their classes
    are terms looked up in the lexical index (capped), and where a chunk found is comes
    from memory: a hop costs the same on a 300k-chunk index as on a small one."""
    edges: dict[int, list[tuple[int, str]]] = defaultdict(list)
    if not ids:
        return edges
    _describe(con, set(ids), known)
    nodes = {cid: known[cid] for cid in ids if cid in known}
    paths = {cid: node[0] for cid, node in nodes.items()}
    # callees: the names each chunk calls, resolved to their definitions: all of them for a
    # name defined in few places, else only those in the caller's own file
    calls = {cid: set(node[4].split()) for cid, node in nodes.items() if node[4]}
    everywhere = lexical.holders("defines", sorted(set().union(*calls.values())) if calls else [],
                                 MAX_FANOUT)
    local: set[int] = set()
    for path in sorted({paths[src] for src in calls}):
        common = {n for src, names in calls.items() if paths[src] == path for n in names} - set(everywhere)
        local.update(lexical.in_file(path, "defines", sorted(common), MAX_FILE_CHUNKS))
    _describe(con, local, known)  # their names (few: definitions in the callers' own files)
    where = lexical.chunks.get({cid for found in everywhere.values() for cid in found})
    defs: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for name, ids_ in everywhere.items():
        defs[name].extend((cid, where[cid][0]) for cid in ids_ if cid in where)
    for cid in sorted(local):
        if cid in known:
            defs[known[cid][1]].append((cid, known[cid][0]))
    for src, names in calls.items():
        for name in sorted(names):
            found = defs.get(name, [])
            mine = [d for d, p in found if p == paths[src]]
            chosen = mine or ([d for d, _ in found] if name in everywhere else [])
            edges[src].extend((d, "callee") for d in dict.fromkeys(chosen) if d != src)
    # callers: the chunks that call each chunk's name (not too common a name)
    by_name: dict[str, list[int]] = defaultdict(list)
    for cid, node in nodes.items():
        if node[1]:
            by_name[node[1]].append(cid)
    for name, calling in lexical.holders("calls", sorted(by_name), MAX_CALLERS).items():
        for dst in by_name[name]:
            edges[dst].extend((caller, "caller") for caller in calling if caller != dst)
    # a method's class and sibling methods, in its file
    for src, node in nodes.items():
        if node[3] != "method" or not node[2]:
            continue
        owner, path = node[2].split(".")[0], node[0]
        classes = lexical.in_file(path, "defines", [owner], MAX_FANOUT)
        edges[src].extend((cid, "class") for cid, (_, kind) in sorted(lexical.chunks.get(classes).items())
                          if kind == "class" and cid != src)
        siblings = [cid for cid in lexical.in_file(path, "owner", [owner], MAX_FANOUT + 1) if cid != src]
        edges[src].extend((cid, "sibling") for cid in siblings[:MAX_FANOUT])
    return edges


def graph_signal(con: duckdb.DuckDBPyConnection, lexical: LexicalIndex, seeds: dict[int, float]) -> Ranked:
    """Personalised PageRank over the two-hop reference graph around `seeds` (id -> weight)."""
    if not seeds:
        return Ranked([])
    graph: dict[int, dict[int, float]] = defaultdict(dict)
    frontier = list(seeds)
    seen = set(frontier)
    known: dict[int, Node] = {}
    for _hop in range(2):
        reach: dict[int, float] = defaultdict(float)
        for src, outs in _neighbours(con, lexical, frontier, known).items():
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
