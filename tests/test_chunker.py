from __future__ import annotations

from pathlib import Path

import pytest

from codevm.indexers.chunker import estimate_tokens, extract
from codevm.indexers.languages import detect_language

POLYGLOT = Path(__file__).parent / "fixtures" / "polyglot"

# file -> (language, definitions that must be found, references that must be found)
EXPECTED = {
    "src/py/shapes.py": ("python", {"Circle", "Circle.area", "Circle.scale", "total_area"},
                         {("area", "call"), ("math", "import")}),
    "src/web/widget.js": ("javascript", {"CounterWidget", "CounterWidget.increment", "formatCount"},
                          {("render", "call"), ("render", "import")}),
    "src/web/store.ts": ("typescript", {"TodoItem", "TodoStore", "TodoStore.addTodo", "countTodos"},
                         {("emit", "call"), ("EventEmitter", "import")}),
    "src/web/Banner.tsx": ("tsx", {"Banner", "BannerProps"}, {("React", "import")}),
    "src/native/server.go": ("go", {"Server", "Server.HandleHealth", "NewServer"},
                             {("Fprintln", "call"), ("fmt", "import")}),
    "src/native/parser.rs": ("rust", {"Token", "Token.new", "tokenize_input"},
                             {("split_whitespace", "call"), ("HashMap", "import")}),
    "src/native/buffer.c": ("c", {"ring_buffer", "ring_buffer_new"}, {("malloc", "call")}),
    "src/native/matrix.cpp": ("cpp", {"linalg", "linalg.Matrix", "linalg.Matrix.trace"},
                              {("vector", "import")}),
    "src/jvm/Inventory.java": ("java", {"Inventory", "Inventory.addSku", "Inventory.stockCount"},
                               {("add", "call"), ("ArrayList", "import")}),
    "src/jvm/Ledger.cs": ("csharp", {"Accounts.Ledger", "Accounts.Ledger.RecordEntry"},
                          {("WriteLine", "call"), ("System", "import")}),
    "src/jvm/Greeter.kt": ("kotlin", {"Greeter", "Greeter.greetLoudly", "pickLarger"},
                           {("max", "call")}),
    "src/jvm/Routes.scala": ("scala", {"Routes", "Routes.resolveRoute", "Handler"},
                             {("stripPrefix", "call")}),
    "src/scripts/deploy.rb": ("ruby", {"Deploy", "Deploy.Release", "Deploy.Release.publish_release"},
                              {("puts", "call"), ("require", "import")}),
    "src/scripts/cart.php": ("php", {"Cart", "Cart.addLine", "cart_total"}, {("log_event", "call")}),
    "src/scripts/Weather.swift": ("swift", {"Forecast", "WeatherService",
                                            "WeatherService.fetchForecast"},
                                  {("Forecast", "call"), ("Foundation", "import")}),
    "src/scripts/build.sh": ("bash", {"build_artifacts"},
                             {("build_artifacts", "call"), ("source", "import")}),
    "src/scripts/config.lua": ("lua", {"M.load_settings", "helper_value"}, {("open", "call")}),
}


@pytest.mark.parametrize("rel", sorted(EXPECTED))
def test_each_language_yields_definitions_and_references(rel: str) -> None:
    language, definitions, references = EXPECTED[rel]
    text = (POLYGLOT / rel).read_text()
    assert detect_language(rel, text[:64].encode()) == language
    ex = extract(rel, text, language, min_tokens=0)
    found = {s[1] for s in ex.symbols}
    assert definitions <= found, f"missing definitions: {definitions - found}"
    refs = {(r[0], r[1]) for r in ex.refs}
    assert references <= refs, f"missing references: {references - refs}"
    # every line of code is in some chunk, and chunks carry line ranges inside the file
    n_lines = text.count("\n") + 1
    for chunk in ex.chunks:
        assert 1 <= chunk.start_line <= chunk.end_line <= n_lines
    assert ex.chunks


def test_methods_are_chunks_of_their_own_and_the_class_keeps_its_header() -> None:
    text = (POLYGLOT / "src/py/shapes.py").read_text()
    ex = extract("shapes.py", text, "python", min_tokens=0)
    by_name = {c.qualified_name: c for c in ex.chunks}
    area = by_name["Circle.area"]
    assert area.kind == "method"
    assert area.docstring == "Area of the circle."
    assert area.signature == "def area(self) -> float"
    assert area.text.lstrip().startswith("def area")
    circle = by_name["Circle"]
    assert circle.kind == "class"
    assert "radius: float" in circle.text  # fields stay with the class
    assert "def area(self) -> float ..." in circle.text  # methods only as signatures
    assert "math.pi" not in circle.text
    assert circle.text.startswith("@dataclass")  # decorators belong to the definition


def test_oversize_function_is_split_at_statements_with_a_header() -> None:
    body = "\n".join(f"    value_{i} = compute_step({i}, value_{i - 1 if i else 0})" for i in range(200))
    text = f"def enormous_pipeline(data):\n{body}\n    return value_199\n"
    ex = extract("big.py", text, "python", max_tokens=200, min_tokens=0)
    parts = [c for c in ex.chunks if c.qualified_name == "enormous_pipeline"]
    assert len(parts) > 5
    assert all(c.tokens <= 200 for c in parts)
    assert parts[0].text.startswith("def enormous_pipeline(data):")
    for part in parts[1:]:
        assert part.text.startswith("def enormous_pipeline(data) ...")
    # the parts cover the function without gaps or overlaps
    assert parts[0].start_line == 1 and parts[-1].end_line == 202
    for a, b in zip(parts, parts[1:]):
        assert b.start_line == a.end_line + 1


def test_tiny_loose_code_is_merged_into_neighbours_but_definitions_stay_apart() -> None:
    text = "\n\n".join(f"LIMIT_{i} = {i}\n\ndef tiny_{i}():\n    return LIMIT_{i}" for i in range(30))
    ex = extract("tiny.py", text, "python", max_tokens=120, min_tokens=32)
    assert all(c.tokens <= 120 for c in ex.chunks)
    # one chunk per function, each named after it, with the constant above it merged in
    assert [c.qualified_name for c in ex.chunks] == [f"tiny_{i}" for i in range(30)]
    assert ex.chunks[3].text.startswith("LIMIT_3 = 3")
    assert ex.chunks[3].start_line == 16
    assert ex.chunks[3].text == "LIMIT_3 = 3\n\ndef tiny_3():\n    return LIMIT_3"


def test_tiny_sections_are_merged() -> None:
    text = "".join(f"## Step {i}\n\nDo {i}.\n\n" for i in range(10))
    ex = extract("steps.md", text, "markdown", max_tokens=384, min_tokens=32)
    assert len(ex.chunks) == 1 and "## Step 9" in ex.chunks[0].text
    ex = extract("steps.md", text, "markdown", max_tokens=24, min_tokens=32)
    assert 1 < len(ex.chunks) < 10 and all(c.tokens <= 24 for c in ex.chunks)


def test_markdown_is_split_by_headings() -> None:
    text = "# Title\n\nintro\n\n## Install\n\n" + "pip install\n" * 80 + "\n## Usage\n\nrun it\n"
    ex = extract("README.md", text, "markdown", max_tokens=100, min_tokens=0)
    titles = [c.qualified_name for c in ex.chunks]
    assert "Title > Install" in titles and "Title > Usage" in titles
    assert all(c.kind == "section" for c in ex.chunks)
    assert all(c.tokens <= 100 for c in ex.chunks)


def test_plain_text_is_split_into_windows() -> None:
    text = "\n".join(f"line {i} of the log" for i in range(500))
    ex = extract("app.log", text, "text", max_tokens=100)
    assert len(ex.chunks) > 10
    assert all(c.kind == "window" and c.tokens <= 100 for c in ex.chunks)
    assert ex.chunks[0].start_line == 1 and ex.chunks[-1].end_line == 500


def test_broken_code_still_yields_chunks() -> None:
    text = "def ok():\n    return 1\n\ndef broken(:\n    pass\n\nclass Fine:\n    x = 1\n"
    ex = extract("broken.py", text, "python", min_tokens=0)
    assert {"ok", "Fine"} <= {s[1] for s in ex.symbols}


def test_token_estimate() -> None:
    assert estimate_tokens("") == 0
    assert estimate_tokens("abcd" * 10) == 10


@pytest.mark.parametrize("language, source, kinds", [
    ("rust", "mod util {\n    pub fn helper() -> u8 { 1 }\n}\nstruct Token;\n"
             "impl Token {\n    fn new() -> Self { Token }\n}\n",
     {"util.helper": "function", "Token.new": "method"}),
    ("cpp", "namespace geo {\nint area(int w) { return w * w; }\n"
            "double Shape::perimeter() const { return 0; }\n}\n"
            "double Matrix::trace() const { return 0; }\n",
     {"geo.area": "function", "geo.Shape.perimeter": "method", "Matrix.trace": "method"}),
    ("typescript", "namespace Util {\n  export function pad(s: string) { return s; }\n}\n"
                   "class Box {\n  open(): void {}\n}\n",
     {"Util.pad": "function", "Box.open": "method"}),
    ("ruby", "module Greeting\n  def hello\n    'hi'\n  end\nend\n", {"Greeting.hello": "method"}),
])
def test_functions_in_modules_and_namespaces_are_not_methods(
        language: str, source: str, kinds: dict[str, str]) -> None:
    ex = extract(f"x.{language}", source, language, min_tokens=0)
    found = {s[1]: s[2] for s in ex.symbols}
    assert {q: found.get(q) for q in kinds} == kinds


def test_a_chunks_terms_count_its_names_docstring_and_path_by_weight(monkeypatch: pytest.MonkeyPatch) -> None:
    from collections import Counter

    from codevm.indexers import identifiers
    from codevm.indexers.chunker import chunk_names
    from codevm.indexers.identifiers import DOC_WEIGHT, NAME_WEIGHT, PATH_WEIGHT, index_text

    source = 'def parseHTTPHeader(raw):\n    """Split headers."""\n    return raw.split(HEADER_SEP)\n'
    chunk = extract("net/wire_codec.py", source, "python", min_tokens=0).chunks[0]
    text = index_text("net/wire_codec.py", chunk.text, chunk_names(chunk), chunk.docstring)
    counts = Counter(text.split(" "))
    # the name: once in the body, NAME_WEIGHT times as the name; its parts as often
    assert counts["parsehttpheader"] == 1 + NAME_WEIGHT and counts["http"] == 1 + NAME_WEIGHT
    # HEADER_SEP's part too, and "headers" (stemmed) in the docstring, with its weight
    assert counts["header"] == 1 + NAME_WEIGHT + 1 + 1 + DOC_WEIGHT
    assert counts["split"] == 2 + DOC_WEIGHT  # raw.split, the docstring, and its weight
    assert counts["codec"] == counts["wire_codec"] == counts["net"] == PATH_WEIGHT
    assert "def" not in counts and "return" not in counts and "" not in counts  # stopwords, no gaps
    # a full memo (a project of more distinct names than it holds) starts again: the same
    # text, and the memo holds no more than the one chunk's names
    names = set(identifiers.IDENTIFIER.findall(" ".join([chunk.text, chunk_names(chunk), "net wire_codec"])))
    parts = "parsehttpheader parse http header"
    monkeypatch.setattr(identifiers, "_joined", {"other": "other", "parseHTTPHeader": parts})
    monkeypatch.setattr(identifiers, "_MEMO_SIZE", 3)
    assert index_text("net/wire_codec.py", chunk.text, chunk_names(chunk), chunk.docstring) == text
    assert set(identifiers._joined) == names
    # a name too long to keep: the same text again, and the memo as it was
    long_name = "x" * 300
    kept = dict(identifiers._joined)
    assert index_text("a.py", f"{long_name} = parseHTTPHeader", "", "") == f"{long_name} {parts}"
    assert identifiers._joined == kept
    # a memo of the caller's own (a rebuild's) is filled instead of the process's
    own: dict[str, str] = {}
    assert index_text("a.py", "totalArea = 1", "", "", own) == "totalarea total area"
    assert own == {"totalArea": "totalarea total area", "a": ""} and identifiers._joined == kept
