"""Schema migrations, applied in order and recorded by name in the `migrations` table.

A migration is applied once: when its name is not recorded yet. Recording names (not
list positions) lets a migration be inserted anywhere in the list without being skipped.
Each runs in its own transaction with its record.
"""

from __future__ import annotations

from collections.abc import Callable

import duckdb


def m001_initial(con: duckdb.DuckDBPyConnection) -> None:
    con.execute("""
        CREATE TABLE meta (key VARCHAR, value VARCHAR);
        CREATE TABLE files (
            path VARCHAR, language VARCHAR, size BIGINT, mtime_ns BIGINT, hash VARCHAR,
            status VARCHAR, reason VARCHAR, n_chunks INTEGER, extractor VARCHAR,
            indexed_at TIMESTAMPTZ);
        CREATE SEQUENCE chunk_ids START 1;
        CREATE TABLE chunks (
            id BIGINT, path VARCHAR, ord INTEGER, language VARCHAR, kind VARCHAR, name VARCHAR,
            qualified_name VARCHAR, start_line INTEGER, end_line INTEGER, signature VARCHAR,
            docstring VARCHAR, text VARCHAR, hash VARCHAR, tokens INTEGER, n_terms INTEGER);
        CREATE SEQUENCE term_ids START 1;
        CREATE TABLE terms (id INTEGER, term VARCHAR);
        -- identifier -> its terms; an identifier with no term (a stopword) maps to NULL
        CREATE TABLE ident_terms (ident VARCHAR, term_id INTEGER);
        CREATE TABLE postings (term_id INTEGER, chunk_id BIGINT, tf INTEGER);
        CREATE TABLE symbols (
            path VARCHAR, language VARCHAR, name VARCHAR, qualified_name VARCHAR, kind VARCHAR,
            start_line INTEGER, end_line INTEGER, signature VARCHAR);
        CREATE TABLE refs (
            path VARCHAR, language VARCHAR, name VARCHAR, kind VARCHAR, line INTEGER,
            caller VARCHAR);
    """)


def m002_search_indexes(con: duckdb.DuckDBPyConnection) -> None:
    # search reads the winning chunks by id: through this index in ~1 ms, by a scan in ~15
    con.execute("CREATE INDEX chunks_id ON chunks (id)")


def m003_terms_from_workers(con: duckdb.DuckDBPyConnection) -> None:
    # parsing processes now expand identifiers into terms: the identifier map is unused
    con.execute("DROP TABLE ident_terms")


def m004_postings_carry_lengths(con: duckdb.DuckDBPyConnection) -> None:
    # search ranks from the postings alone: each carries its chunk's length, and the
    # chunks replaced since the last compaction are listed in dead_chunks
    con.execute("""
        CREATE TABLE postings_new AS
        SELECT p.term_id, p.chunk_id, p.tf, c.n_terms FROM postings p
        JOIN chunks c ON c.id = p.chunk_id ORDER BY p.term_id, p.chunk_id""")
    con.execute("DROP TABLE postings")
    con.execute("ALTER TABLE postings_new RENAME TO postings")
    con.execute("DELETE FROM meta WHERE key = 'postings_sorted_rows'")
    con.execute("INSERT INTO meta SELECT 'postings_sorted_rows', count(*)::VARCHAR FROM postings")
    con.execute("CREATE TABLE dead_chunks (id BIGINT)")
    # exact symbol matches are looked up by name
    con.execute("CREATE INDEX chunks_name ON chunks (name)")
    con.execute("CREATE INDEX chunks_qualified_name ON chunks (qualified_name)")


def m005_memory(con: duckdb.DuckDBPyConnection) -> None:
    # local time, as users read it (TIMESTAMPTZ would need pytz on the Python side)
    con.execute("""
        -- core memory: always in main context, size-capped
        CREATE TABLE core_blocks (
            label VARCHAR PRIMARY KEY, value VARCHAR, char_limit INTEGER,
            updated_at TIMESTAMP);
        -- archival notes; an anchor (path, symbol, hash of that code) makes a note stale
        -- when its code changes
        CREATE SEQUENCE note_ids START 1;
        CREATE TABLE notes (
            id BIGINT PRIMARY KEY, text VARCHAR, tags VARCHAR[], source VARCHAR,
            path VARCHAR, symbol VARCHAR, anchor_hash VARCHAR, stale BOOLEAN,
            created_at TIMESTAMP, updated_at TIMESTAMP);
        -- recall storage: every message of every session
        CREATE TABLE sessions (
            id VARCHAR PRIMARY KEY, title VARCHAR, summary VARCHAR,
            created_at TIMESTAMP, updated_at TIMESTAMP);
        CREATE SEQUENCE message_ids START 1;
        CREATE TABLE messages (
            id BIGINT PRIMARY KEY, session_id VARCHAR, role VARCHAR, content VARCHAR,
            tool_calls VARCHAR, tool_name VARCHAR, tokens INTEGER, in_context BOOLEAN,
            created_at TIMESTAMP);
    """)


def m006_embeddings(con: duckdb.DuckDBPyConnection) -> None:
    # dense vectors live in one table per dimension, embeddings_<n> (model, hash,
    # vec FLOAT[n]), created with an embedder's first vectors: a model's dimension is known
    # only once it answers. This table records each embedder's dimension.
    con.execute("""
        CREATE TABLE embedding_models (
            model VARCHAR PRIMARY KEY, dimension INTEGER, created_at TIMESTAMP)""")


def m007_empty_strings_in_references(con: duckdb.DuckDBPyConnection) -> None:
    # empty fields of the workers' TSV files were read as NULL (a module-level call's
    # caller, a symbol without signature), where the API promises ''
    for table, columns in (("symbols", ("name", "qualified_name", "kind", "signature")),
                           ("refs", ("name", "kind", "caller"))):
        for column in columns:
            con.execute(f"UPDATE {table} SET {column} = '' WHERE {column} IS NULL")


def _add_chunk_column(con: duckdb.DuckDBPyConnection, column: str, source: str) -> None:
    """Add `column` to chunks from the temp table `source` (id, column), '' where it has no
    row. DuckDB cannot add a column to a table with indexes: the table is copied."""
    con.execute(f"""
        CREATE TABLE chunks_new AS
        SELECT c.*, coalesce(s.{column}, '') AS {column} FROM chunks c LEFT JOIN {source} s USING (id)
        ORDER BY c.id""")
    con.execute("DROP TABLE chunks")
    con.execute("ALTER TABLE chunks_new RENAME TO chunks")
    con.execute(f"DROP TABLE {source}")
    con.execute("CREATE INDEX chunks_id ON chunks (id)")
    con.execute("CREATE INDEX chunks_name ON chunks (name)")
    con.execute("CREATE INDEX chunks_qualified_name ON chunks (qualified_name)")


def m008_lexical_index_in_tantivy(con: duckdb.DuckDBPyConnection) -> None:
    # BM25 moves to tantivy (codevm/db/lexical.py); the database keeps each chunk's weighted
    # terms, from which that index is made (again, when it is lost), rebuilt here from the
    # postings.
    con.execute("""
        CREATE TEMP TABLE chunk_terms AS
        SELECT p.chunk_id AS id, string_agg(t.term || ':' || p.tf, ' ') AS terms
        FROM postings p JOIN terms t ON t.id = p.term_id GROUP BY 1""")
    _add_chunk_column(con, "terms", "chunk_terms")
    for table in ("postings", "terms", "dead_chunks"):
        con.execute(f"DROP TABLE {table}")
    con.execute("DROP SEQUENCE term_ids")
    con.execute("DELETE FROM meta WHERE key = 'postings_sorted_rows'")
    # the paths each index batch changed, until tantivy has committed that batch
    con.execute("CREATE TABLE lexical_pending (generation BIGINT, path VARCHAR)")


def m009_calls_of_each_chunk(con: duckdb.DuckDBPyConnection) -> None:
    # the names each chunk calls (the calls on its lines that no smaller chunk holds), for
    # the graph signal: read by id, and indexed by tantivy for the callers of a name, where
    # the graph used to scan all of `refs` (814k rows on u-boot) twice a hop
    con.execute(r"""
        CREATE TEMP TABLE chunk_calls AS
        WITH hit AS (
            SELECT r.path, r.line, r.name, c.id, c.end_line - c.start_line AS span
            FROM refs r JOIN chunks c ON c.path = r.path AND r.line BETWEEN c.start_line AND c.end_line
            WHERE r.kind = 'call'),
        owner AS (SELECT path, line, name, arg_min(id, span) AS id FROM hit GROUP BY ALL)
        SELECT id, string_agg(DISTINCT regexp_replace(name, '\s+', '_', 'g'), ' ') AS calls
        FROM owner GROUP BY id""")
    _add_chunk_column(con, "calls", "chunk_calls")


def m010_no_name_indexes_on_chunks(con: duckdb.DuckDBPyConnection) -> None:
    # exact names, definitions and the graph look names up in the lexical index now: these
    # two indexes only cost every write (an ART insert per chunk, growing with the index)
    con.execute("DROP INDEX IF EXISTS chunks_name")
    con.execute("DROP INDEX IF EXISTS chunks_qualified_name")


def m011_index_text_made_not_kept(con: duckdb.DuckDBPyConnection) -> None:
    # each chunk's terms ("term:count ...") go, and their count (read by nothing since the
    # postings went, m008): the workers hand tantivy each chunk's index text with its
    # batch, and a rebuild makes it again from the chunk's text, docstring, path and names
    # (the definitions it holds, when more than its qualified name: '' until the file is
    # parsed again, which EXTRACTOR_VERSION 3 asks for). DuckDB cannot drop a column of a
    # table with an index: the table is copied.
    con.execute("CREATE TABLE chunks_new AS SELECT * EXCLUDE (terms, n_terms), '' AS names FROM chunks ORDER BY id")
    con.execute("DROP TABLE chunks")
    con.execute("ALTER TABLE chunks_new RENAME TO chunks")
    con.execute("CREATE INDEX chunks_id ON chunks (id)")


MIGRATIONS: list[Callable[[duckdb.DuckDBPyConnection], None]] = [
    m001_initial, m002_search_indexes, m003_terms_from_workers, m004_postings_carry_lengths,
    m005_memory, m006_embeddings, m007_empty_strings_in_references, m008_lexical_index_in_tantivy,
    m009_calls_of_each_chunk, m010_no_name_indexes_on_chunks,
    m011_index_text_made_not_kept]


def apply(con: duckdb.DuckDBPyConnection,
          migrations: list[Callable[[duckdb.DuckDBPyConnection], None]] | None = None) -> list[str]:
    """Apply the migrations not recorded yet; the names of those applied now."""
    con.execute("CREATE TABLE IF NOT EXISTS migrations (id INTEGER, name VARCHAR, "
                "applied_at TIMESTAMPTZ DEFAULT current_timestamp)")
    done = {row[0] for row in con.execute("SELECT name FROM migrations").fetchall()}
    applied = []
    for migration in MIGRATIONS if migrations is None else migrations:
        if migration.__name__ in done:
            continue
        con.execute("BEGIN")
        try:
            migration(con)
            con.execute("INSERT INTO migrations (id, name) SELECT coalesce(max(id), 0) + 1, ? "
                        "FROM migrations", [migration.__name__])
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        applied.append(migration.__name__)
    return applied
