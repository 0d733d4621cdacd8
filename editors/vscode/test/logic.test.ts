import * as assert from "node:assert/strict";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { test } from "node:test";

import { contextHtml, findCodevm, Page, segments } from "../src/logic";

const page = (p: string, start: number, end: number): Page => ({
  path: p, start_line: start, end_line: end, symbol: "total_area", tokens: 120, relevance: 1, reason: "search",
  citation: `${p}:${start}-${end}`,
});

test("a path with lines that names a page is a link to those lines", () => {
  const out = segments("See src/py/shapes.py:21-23 for it.", [page("src/py/shapes.py", 20, 30)], () => false);
  assert.deepEqual(out, [
    { text: "See " },
    { text: "src/py/shapes.py:21-23", path: "src/py/shapes.py", line: 21, endLine: 23 },
    { text: " for it." },
  ]);
});

test("a bare file name resolves to the page it ends, at the page's lines", () => {
  const out = segments("It is in shapes.py.", [page("src/py/shapes.py", 20, 30)], () => false);
  assert.deepEqual(out[1], { text: "shapes.py", path: "src/py/shapes.py", line: 20, endLine: 30 });
  assert.equal(out.map((s) => s.text).join(""), "It is in shapes.py.");
});

test("a path that is neither a page nor a file stays text; an existing file is a link", () => {
  const exists = (rel: string) => rel === "README.md";
  const out = segments("Read README.md, not os.path or e.g. foo.bar/baz.", [], exists);
  assert.deepEqual(out.filter((s) => "path" in s), [{ text: "README.md", path: "README.md", line: 1, endLine: 1 }]);
  assert.equal(out.map((s) => s.text).join(""), "Read README.md, not os.path or e.g. foo.bar/baz.");
});

test("the picture of main context escapes what the model and the code wrote", () => {
  const html = contextHtml({ budget: 4096, used: 2048, num_ctx: 8192, sections: [
    { name: "working set", tokens: 1800, items: ["<script>alert(1)</script>"] }] },
  [page("src/a<b>.py", 1, 2)], "why <b>?");
  assert.ok(html.includes("2,048/4,096 tokens") && html.includes("width:50%"));
  assert.ok(!html.includes("<script>") && html.includes("&lt;script&gt;") && html.includes("src/a&lt;b&gt;.py:1-2"));
});

test("codevm is found on PATH or at the configured path, and missing is undefined", () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "codevm-find-"));
  const exe = path.join(dir, "codevm");
  fs.writeFileSync(exe, "#!/bin/sh\n");
  fs.chmodSync(exe, 0o755);
  assert.equal(findCodevm("", `/nonexistent${path.delimiter}${dir}`), exe);
  assert.equal(findCodevm(exe, ""), exe);
  assert.equal(findCodevm("", "/nonexistent"), undefined);
  assert.equal(findCodevm(path.join(dir, "missing"), dir), undefined); // a configured path is not second-guessed
  fs.chmodSync(exe, 0o644);
  assert.equal(findCodevm("", dir), undefined); // not executable
});
