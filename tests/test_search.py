from __future__ import annotations

from pathlib import Path

import pytest

from codevm.config import Settings
from codevm.engine import Engine
from codevm.errors import InvalidArgument, NotIndexed, PathOutsideProject
from codevm.retrieval.lexical import analyse_query, lexical


def test_identifiers_are_kept_whole_and_split() -> None:
    q = analyse_query("why does parseHTTPResponse call read_chunk_size?")
    for term in ["parsehttpresponse", "parse", "http", "response", "read_chunk_size", "read",
                 "chunk", "size", "call"]:
        assert term in q.terms, term
    assert "does" not in q.terms  # stopword
    assert q.terms["read_chunk_size"] > q.terms["call"]  # code-like identifiers weigh more


def test_the_tails_of_number_literals_are_not_identifiers() -> None:
    from codevm.indexers.identifiers import IDENTIFIER

    code = "mask = 0xFFFFFFFFU | 10UL; rate = 1e5 * x2; größe = 0xFFé + 3ème"
    assert IDENTIFIER.findall(code) == ["mask", "rate", "x2", "größe"]
    assert IDENTIFIER.findall(code.encode("ascii", "ignore").decode()) == ["mask", "rate", "x2", "gre"]
    assert "xffffffffu" not in analyse_query("why is 0xFFFFFFFFU written to the mask register?").terms


def test_the_ascii_fast_path_finds_what_the_unicode_pattern_finds() -> None:
    import random

    from codevm.indexers.identifiers import _ASCII_IDENTIFIER, _UNICODE_IDENTIFIER

    rng = random.Random(7)
    alphabet = "aZ_9 0x.\t\n-+(){}[]#\"'`$@\\/:;,=<>!?~|&*^%"
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randrange(40))) for _ in range(5000)]
    texts += ["0xFFu _a __init__ a1b2 9lives x2 1e5 _ __ a_1 A.b->c::d", ""]
    for text in texts:
        assert _ASCII_IDENTIFIER.findall(text) == _UNICODE_IDENTIFIER.findall(text), text


UNICODE_SOURCES = {
    "données.py": "def données_brutes(valeur):\n    return valeur\n\n\nclass 数据处理:\n"
                  "    def 处理(self, x):\n        return données_brutes(x)\n",
    "app.js": "function größeBerechnen(breite, höhe) {\n  return breite * höhe;\n}\n",
    "Main.java": "class Ünicode {\n    int wertAusrechnen(int zähler) { return zähler + 1; }\n}\n",
    "main.go": "package main\n\nfunc Größe(x int) int { return x * 2 }\n",
    "lib.rs": "fn größe_berechnen(x: i32) -> i32 { x * 2 }\n",
}


def test_identifiers_in_any_script_are_symbols_and_searchable(tmp_path: Path) -> None:
    for name, text in UNICODE_SOURCES.items():
        (tmp_path / name).write_text(text)
    with Engine(tmp_path, Settings(embedder="off", service=False)) as engine:
        engine.index()
        for name, path in [("données_brutes", "données.py"), ("数据处理", "données.py"),
                           ("数据处理.处理", "données.py"), ("größeBerechnen", "app.js"),
                           ("wertAusrechnen", "Main.java"), ("Größe", "main.go"),
                           ("größe_berechnen", "lib.rs")]:
            assert [s.path for s in engine.symbol(name)] == [path], name
            assert engine.search(name)[0].path == path, name
        # their parts, as for ASCII names: größeBerechnen and größe_berechnen share "berechnen"
        assert {h.path for h in engine.search("berechnen")} == {"app.js", "lib.rs"}
        assert engine.search("brutes")[0].path == "données.py"
        assert [r.path for r in engine.refs("données_brutes")] == ["données.py"]
    terms = analyse_query("données_brutes ÜberKlasse").terms
    assert {"données_brutes", "donnée", "brute", "überklasse", "über", "klasse"} <= set(terms)


def test_every_argument_has_a_type_and_a_cap(engine: Engine) -> None:
    import inspect

    from codevm.api import API_METHODS, INT_ARGUMENTS, LIST_CAPS, TEXT_CAPS, EngineAPI

    uncapped = [f"{name}({p})" for name in sorted(API_METHODS)
                for p, param in list(inspect.signature(getattr(EngineAPI, name)).parameters.items())[1:]
                if "str" in str(param.annotation) and "Callable" not in str(param.annotation)
                and p not in TEXT_CAPS and p not in LIST_CAPS
                and f"{name}.{p}" not in TEXT_CAPS and p not in INT_ARGUMENTS]
    assert not uncapped  # every text argument of every door has a cap
    for call, message in [
        (lambda: engine.search("x" * 32_001), "query is 32,001 characters long: at most 32,000"),
        (lambda: engine.search("total", k=0), "k must be between 1 and 10,000"),
        (lambda: engine.search("total", k="5"), "k must be a whole number"),  # type: ignore[arg-type]
        (lambda: engine.add_note("x", tags="abc"), "tags must be a list of text"),  # type: ignore[arg-type]
        (lambda: engine.add_note({"a": 1}), "text must be text, not dict"),  # type: ignore[arg-type]
        (lambda: engine.add_note("x" * 20_001), "at most 20,000"),
        (lambda: engine.symbol("s", 5, 6), "symbol: too many positional arguments"),  # type: ignore[call-arg]
        (lambda: engine.read("p" * 5_000), "path is 5,000 characters long"),
        (lambda: engine.search("total", path_glob="*" * 5_000), "path_glob is 5,000 characters long"),
    ]:
        with pytest.raises(InvalidArgument, match=message):
            call()
    assert not engine.list_notes()
    # a long query is taken, in time linear in its length (a 16k-character word took 6 s)
    assert engine.search("total_area " + "a." * 10_000 + " " + "x" * 9_000)[0].path == "src/py/shapes.py"


def test_exact_symbol_first_with_hit_fields(engine: Engine) -> None:
    hits = engine.search("total_area")
    top = hits[0]
    assert (top.path, top.symbol, top.kind, top.language) == ("src/py/shapes.py", "total_area",
                                                             "function", "python")
    assert top.start_line <= 21 <= top.end_line
    assert "total_area" in top.snippet and top.score > 0
    assert top.id > 0


def test_natural_words_find_code(engine: Engine) -> None:
    assert engine.search("sum the areas of many shapes", k=3)[0].path == "src/py/shapes.py"
    assert engine.search("stock levels inventory", k=1)[0].path == "src/jvm/Inventory.java"
    assert engine.search("answers health checks", k=1)[0].path == "src/native/server.go"


def test_split_parts_match_across_naming_styles(engine: Engine) -> None:
    # camelCase in the code, words in the query
    assert engine.search("greet loudly", k=1)[0].symbol == "Greeter.greetLoudly"
    # snake_case in the code, camelCase in the query
    assert engine.search("publishRelease", k=1)[0].symbol == "Deploy.Release.publish_release"


def test_filters(engine: Engine) -> None:
    assert {h.language for h in engine.search("add", k=20, language="java")} == {"java"}
    assert all(h.path.startswith("src/web/") for h in engine.search("todo", path_glob="src/web/*"))
    assert all(h.path.endswith(".ts") for h in engine.search("todo", path_glob="*.ts"))
    assert {h.kind for h in engine.search("add todo item", k=20, kind="method")} == {"method"}
    assert engine.search("todo", language="cobol") == []


def test_markdown_and_text_are_searchable(engine: Engine) -> None:
    assert engine.search("flux capacitor", k=1)[0].path == "docs/guide.md"
    assert engine.search("quasar calibration", k=1)[0].path == "notes.txt"


def test_symbol_and_refs(engine: Engine) -> None:
    (d,) = engine.symbol("Circle.area")
    assert (d.path, d.kind, d.start_line, d.end_line) == ("src/py/shapes.py", "method", 13, 15)
    assert {s.path for s in engine.symbol("trace")} == {"src/native/matrix.cpp"}
    refs = engine.refs("total_area")
    assert {(r.path, r.kind) for r in refs} == {("src/py/app.py", "import"), ("src/py/app.py", "call")}
    assert any(r.caller == "main" for r in refs)


def test_bad_arguments(engine: Engine) -> None:
    with pytest.raises(InvalidArgument):
        engine.search("   ")
    with pytest.raises(InvalidArgument):
        engine.search("x", k=0)
    with pytest.raises(PathOutsideProject):
        engine.read("../outside.py")
    with pytest.raises(PathOutsideProject):
        engine.read("/etc/passwd")
    with pytest.raises(InvalidArgument):
        engine.read("src/py/shapes.py", 10, 5)
    assert engine.search("!!! ???") == []


def test_read_lines(engine: Engine) -> None:
    code = engine.read("src/py/shapes.py", 13, 15)
    assert code.text.splitlines()[0].strip() == "def area(self) -> float:"
    assert code.total_lines >= 23
    (engine.root / "seven.py").write_text("".join(f"x{i} = {i}\n" for i in range(7)))
    assert engine.read("seven.py").total_lines == 7  # the last newline starts no eighth line
    assert engine.read("seven.py", 7, 7).text == "x6 = 6"
    with pytest.raises(InvalidArgument, match="seven.py has only 7 lines"):
        engine.read("seven.py", 8)
    with pytest.raises(InvalidArgument, match="invalid line range 0-0"):
        engine.read("seven.py", 0, 0)  # `show seven.py:0` printed the whole file


def test_ignored_files_secrets_and_git_internals_are_not_shown(project: Path) -> None:
    (project / ".git").mkdir(exist_ok=True)
    (project / ".git/config").write_text("[remote]\nurl = https://token@example.com\n")
    (project / ".env").write_text("API_KEY=hunter2\n")
    (project / "deploy.pem").write_text("-----BEGIN PRIVATE KEY-----\n")
    (project / ".gitignore").write_text("private/\n")
    (project / "private").mkdir()
    (project / "private/notes.py").write_text("password = 'x'\n")
    with Engine(project, Settings(service=False, embedder="off")) as engine:
        engine.index()
        for path, why in [(".git/config", "version-control"), (".env", "may hold secrets"),
                          ("deploy.pem", "may hold secrets"), ("private/notes.py", "ignored by the project")]:
            with pytest.raises(InvalidArgument, match=why):
                engine.read(path)
        assert engine.read("src/py/shapes.py").total_lines > 20
    with Engine(project, Settings(service=False, embedder="off", read_ignored=True)) as engine:
        assert engine.read(".env").text == "API_KEY=hunter2"


def test_search_before_indexing_says_what_to_do(project) -> None:
    with Engine(project) as engine, pytest.raises(NotIndexed, match="codevm index"):
        engine.search("anything")


def test_test_files_yield_to_the_code_they_test_for_long_questions(engine: Engine) -> None:
    tests_dir = engine.root / "tests"
    tests_dir.mkdir()
    (tests_dir / "test_shapes.py").write_text(
        "from src.py.shapes import total_area, Circle\n\n"
        "def test_total_area_sums_areas_of_many_shapes():\n"
        "    # the total area of an empty list of shapes: expected zero\n"
        "    assert total_area([Circle(1), Circle(2)]) == total_area([Circle(2), Circle(1)])\n")
    engine.index()
    issue = ("When I sum the areas of many shapes with total_area the result is wrong for an "
             "empty list of shapes; I expected zero but the areas of the shapes are not summed "
             "the way the docs describe, so please look at how the total area is computed")
    # both chunks of shapes.py (Circle and total_area) come before the test that calls them
    assert [h.path for h in engine.search(issue, k=2)] == ["src/py/shapes.py"] * 2
    # a question about tests, or a symbol named outright, is not held back (seen without
    # the files' evidence: here the test's file has one chunk, shapes.py has several)
    engine.configure(Settings(weight_file=0.0))
    assert engine.search("which test sums the areas of many shapes", k=1)[0].path == "tests/test_shapes.py"
    assert engine.search("test_total_area_sums_areas_of_many_shapes", k=1)[0].path == "tests/test_shapes.py"


def test_tests_of_other_languages_yield_too(engine: Engine) -> None:
    # JavaScript/TypeScript (__tests__/, .spec.ts, .test.js) and Ruby (spec/, _spec.rb)
    # tests that use the question's words more often than the code under test does
    spec = ("// the total area of many shapes: sum the areas of the shapes; the areas of an empty\n"
            "// list of shapes sum to zero, as the docs describe the total area\n"
            "describe('total area of shapes', () => { it('sums the areas of many shapes', () => {\n"
            "  expect(totalArea(shapes)).toBe(sumOfAreas(shapes)) }) })\n")
    paths = ("web/__tests__/shapes.ts", "web/shapes.spec.ts", "web/area.test.js", "spec/shapes_spec.rb")
    for path in paths:
        (engine.root / path).parent.mkdir(parents=True, exist_ok=True)
        text = spec * 3  # the question's words three times over: without the prior they come first
        (engine.root / path).write_text(text if not path.endswith(".rb") else text.replace("//", "#"))
    engine.index()
    issue = ("When I sum the areas of many shapes with total_area the result is wrong for an "
             "empty list of shapes; I expected zero but the areas of the shapes are not summed "
             "the way the docs describe, so please look at how the total area is computed")
    engine.configure(Settings(weight_file=0.0))
    ranked = [h.path for h in engine.search(issue, k=8)]
    assert ranked[0] == "src/py/shapes.py", ranked
    assert not set(paths) & set(ranked[:3]), ranked
    # a question about tests finds them
    assert engine.search("which tests check that the areas of many shapes sum up", k=1)[0].path in paths


def test_vendored_code_yields_to_the_projects_own_for_long_questions(engine: Engine) -> None:
    # a vendored copy of a library, and a translation catalog, that use the question's
    # words more often than the project's own code does
    copy = ("def total_area(shapes):\n    # the total area of many shapes: sum the areas of the shapes; the\n"
            "    # areas of an empty list of shapes sum to zero, as the docs describe the total area\n"
            "    return sum(shape_area(s) for s in shapes)\n")
    for path in ("third_party/geometry/areas.py", "static/geometry-2.1.0.js", "locale/de/LC_MESSAGES/shapes.js"):
        (engine.root / path).parent.mkdir(parents=True, exist_ok=True)
        (engine.root / path).write_text(copy if path.endswith(".py") else
                                        "var messages = {'total area of shapes': 'Gesamtfläche', "
                                        "'areas of shapes sum': 'Summe', 'empty list of shapes': 'leer'};\n")
    engine.index()
    issue = ("When I sum the areas of many shapes with total_area the result is wrong for an "
             "empty list of shapes; I expected zero but the areas of the shapes are not summed "
             "the way the docs describe, so please look at how the total area is computed")
    engine.configure(Settings(weight_file=0.0))  # no help from shapes.py having more chunks
    paths = [h.path for h in engine.search(issue, k=5)]
    assert paths[0] == "src/py/shapes.py", paths
    assert paths.index("third_party/geometry/areas.py") > paths.index("src/py/shapes.py")
    # named outright, a vendored definition is found first all the same
    assert engine.search("total_area", k=2)[0].path in ("src/py/shapes.py", "third_party/geometry/areas.py")
    hits = engine.search("shape_area", k=1)
    assert hits[0].path == "third_party/geometry/areas.py"


def test_plain_words_that_spell_a_name_find_it_before_one_words_names(project: Path) -> None:
    # names equal to one word of the query (`add`, `directive`, `to`) are everywhere; the
    # name the words spell together is what a developer typing them looks for
    (project / "src/py/registry.py").write_text(
        "class Tags:\n    def add(self, tag):\n        self.tags.append(tag)\n\n\n"
        "class Catalog:\n    def add(self, msg):\n        self.messages.append(msg)\n\n\n"
        "class Node:\n    def directive(self):\n        return self.name\n\n\n"
        "class Var:\n    def to(self, kind):\n        return kind(self.value)\n\n\n"
        "class Application:\n"
        "    def add_directive(self, name, cls):\n        self.registry.register(name, cls)\n\n"
        "    def sync_state(self, socket):\n        socket.send(self.state)\n\n"
        "    def get_user_by_id(self, key):\n        return self.users[key]\n")
    with Engine(project) as engine:
        engine.index()
        for query in ("add directive", "add directives", "how to add a new directive", "add the directive"):
            assert engine.search(query, k=3)[0].symbol == "Application.add_directive", query
        assert engine.search("get user by id", k=3)[0].symbol == "Application.get_user_by_id"
        # a one-word name still comes first when that word is the whole query
        assert engine.search("add", k=3)[0].symbol in ("Tags.add", "Catalog.add")
        # a question's stopwords name nothing: `to` is not an exact match of "to"
        hits = engine.search("how does the state get synced to the frontend over the socket", k=3)
        assert "Var.to" not in [h.symbol for h in hits], [h.symbol for h in hits]


def test_literal_code_finds_the_chunks_that_hold_it(project: Path) -> None:
    (project / "src/py/arith.py").write_text(
        "def add_numbers(a, b):\n    return a + b\n\n\n"
        "def subtract_numbers(a, b):\n    return a - b\n\n\n"
        "def route(registry, name):\n    handler = registry.lookup_handler(name)\n    return handler\n\n\n"
        "def lookup_handler(name):\n    return HANDLERS[name]\n")
    with Engine(project) as engine:
        engine.index()
        # no word of it is indexed (return is a stopword, a and b too short): the text is read
        assert engine.search("return a + b", k=1)[0].symbol == "add_numbers"
        assert engine.search("return a - b", k=1)[0].symbol == "subtract_numbers"
        # quoted in a question: the call site that holds it, beside the name's definition
        hits = engine.search("why does `registry.lookup_handler(name)` fail for unknown names", k=3)
        assert {h.symbol for h in hits[:2]} == {"route", "lookup_handler"}, [h.symbol for h in hits]
        # an error message quoted from a traceback, found through the index's words
        (project / "src/py/errors.py").write_text(
            "def check(value):\n    if value < 0:\n        raise ValueError('the quokka count must not be negative')\n")
        engine.index()
        hits = engine.search("I get ValueError: the quokka count must not be negative when I pass -1", k=1)
        assert hits[0].symbol == "check"
        assert engine.search("`nothing like this anywhere (`", k=5) == [] or all(
            "nothing like" not in h.snippet for h in engine.search("`nothing like this anywhere (`", k=5))


def test_one_hit_per_definition_with_its_best_part(tmp_path: Path) -> None:
    # a function too long for one chunk: its parts all hold the words searched for
    body = "\n".join(f"    upload_{i} = upload_file_part(stream, {i}, upload_{i - 1 if i else 0})"
                     for i in range(300))
    (tmp_path / "big.py").write_text(
        f"def upload_everything(stream):\n{body}\n    return upload_299\n\n\n"
        "def upload_file_part(stream, n, previous):\n    return stream.send(n, previous)\n")
    (tmp_path / "other.py").write_text("def upload_avatar(user):\n    return user.avatar\n")
    with Engine(tmp_path, Settings(embedder="off", service=False)) as engine:
        engine.index()
        parts = engine.store.cursor().execute(
            "SELECT count(*) FROM chunks WHERE qualified_name = 'upload_everything'").fetchone()[0]
        assert parts > 3
        hits = engine.search("upload file part stream", k=10)
        names = [h.symbol for h in hits]
        assert names.count("upload_everything") == 1  # one hit for all its parts
        # reading the hit reads the whole function, whichever part ranked best
        whole = engine.read_chunk(hits[names.index("upload_everything")].id)
        assert (whole.start_line, whole.end_line) == (1, 302)
        assert whole.text.startswith("def upload_everything") and whole.text.rstrip().endswith("return upload_299")
        assert {"upload_file_part", "upload_avatar"} <= set(names)
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
        # k counts definitions: asking for 2 gives two different ones
        assert len({h.symbol for h in engine.search("upload file part stream", k=2)}) == 2


def test_a_name_defined_everywhere_gives_a_question_no_exact_boost(tmp_path: Path) -> None:
    # 40 classes define save(); a question that mentions saving names them all, and the
    # exact-name boost (half the best hit's score) would put one of them above the code
    # that the question describes
    root = tmp_path / "generic"
    (root / ".git").mkdir(parents=True)
    (root / "models").mkdir()
    for i in range(40):
        body = "# save the records' data to disk before the cache is cleared\n        " if i == 0 else ""
        (root / "models" / f"m{i}.py").write_text(
            f"class M{i}:\n    def save(self):\n        {body}return self.write({i})\n")
    (root / "store.py").write_text(
        "def write_records(records, disk):\n    # the records' data is written to disk, the cache cleared after\n"
        "    for record in records:\n        disk.write(record.data)\n    records.cache.clear()\n")
    question = "records lose their data after save because the cache is cleared before the records are written to disk"
    with Engine(root, Settings(service=False, embedder="off")) as engine:
        engine.index()
        q, ranked = lexical(engine.store.cursor(), engine.store.lexical, question, 100)
        names = dict(engine.store.cursor().execute("SELECT id, qualified_name FROM chunks").fetchall())
        assert not q.short and names[ranked[0].chunk_id] == "write_records", [names[i.chunk_id] for i in ranked[:3]]
        # typed alone, the generic name still finds its definitions first
        assert all(h.symbol.endswith(".save") for h in engine.search("save", k=3))
