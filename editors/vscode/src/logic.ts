// What the extension decides without VS Code: where codevm is, which words of an answer
// are citations, how main context is drawn. Unit-tested with node's test runner.
import * as fs from "fs";
import * as path from "path";

/** The codevm command: the configured path, else `codevm` on PATH; undefined if neither. */
export function findCodevm(configured: string, envPath: string, isWindows = false): string | undefined {
  const runnable = (file: string) => {
    try {
      return fs.statSync(file).isFile() && (isWindows || (fs.statSync(file).mode & 0o111) !== 0);
    } catch {
      return false;
    }
  };
  if (configured.trim()) {
    const file = configured.trim().replace(/^~(?=\/|$)/, process.env.HOME ?? "~");
    return runnable(file) ? file : undefined;
  }
  const names = isWindows ? ["codevm.exe", "codevm.cmd", "codevm"] : ["codevm"];
  for (const dir of envPath.split(path.delimiter).filter(Boolean)) {
    for (const name of names) {
      const file = path.join(dir, name);
      if (runnable(file)) {
        return file;
      }
    }
  }
  return undefined;
}

export interface Page {
  path: string;
  uri?: string;
  start_line: number;
  end_line: number;
  symbol: string;
  tokens: number;
  relevance: number;
  reason: string;
  citation: string;
}

/** A piece of an answer: plain text, or a citation that opens a file at its lines. */
export type Segment = { text: string } | { text: string; path: string; line: number; endLine: number };

const CITATION = /(?<![\w./-])((?:[\w.-]+\/)*[\w.-]+\.[A-Za-z][A-Za-z0-9]{0,9})(?::(\d+)(?:-(\d+))?)?(?![\w/])/g;

/**
 * The answer cut into text and citations. A citation is a path the model wrote that names a
 * page it was shown (the whole path, or its last parts: "shapes.py" for src/py/shapes.py),
 * or a file that `exists` in the project; with lines if it gave them, else the page's.
 */
export function segments(answer: string, pages: Page[], exists: (rel: string) => boolean): Segment[] {
  const out: Segment[] = [];
  let last = 0;
  for (const m of answer.matchAll(CITATION)) {
    const written = m[1].replace(/^\.\//, "");
    const page = pages.find((p) => p.path === written)
      ?? pages.find((p) => p.path.endsWith("/" + written));
    const rel = page?.path ?? (exists(written) ? written : undefined);
    if (rel === undefined) {
      continue;
    }
    const line = m[2] ? Number(m[2]) : page?.start_line ?? 1;
    const endLine = m[3] ? Number(m[3]) : m[2] ? line : page?.end_line ?? line;
    if (m.index! > last) {
      out.push({ text: answer.slice(last, m.index) });
    }
    out.push({ text: m[0], path: rel, line, endLine: Math.max(endLine, line) });
    last = m.index! + m[0].length;
  }
  if (last < answer.length) {
    out.push({ text: answer.slice(last) });
  }
  return out;
}

export interface ContextReport {
  budget: number;
  used: number;
  num_ctx: number;
  pressure?: boolean;
  sections: { name: string; tokens: number; items: string[] }[];
}

const escapes: Record<string, string> = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };

export function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (c) => escapes[c]);
}

/** Main context as `codevm ask --show-context` draws it, in HTML: the budget bar, each
 * section with its tokens and items, then the pages with links. */
export function contextHtml(context: ContextReport | null | undefined, pages: Page[], question: string): string {
  if (!context) {
    return "<p>No picture of main context for this answer.</p>";
  }
  const share = Math.min(100, Math.round((100 * context.used) / Math.max(context.budget, 1)));
  const rows = context.sections.map((s) =>
    `<tr><td>${escapeHtml(s.name)}</td><td class="n">${s.tokens.toLocaleString("en")}</td><td>${
      s.items.map((i) => `<div>${escapeHtml(i)}</div>`).join("")}</td></tr>`).join("");
  const pageRows = pages.map((p) =>
    `<tr><td><a href="#" class="cite" data-path="${escapeHtml(p.path)}" data-line="${p.start_line}" data-end="${
      p.end_line}">${escapeHtml(p.citation)}</a></td><td>${escapeHtml(p.symbol)}</td><td class="n">${
      p.tokens.toLocaleString("en")}</td><td class="n">${p.relevance.toFixed(2)}</td><td>${escapeHtml(p.reason)}</td></tr>`)
    .join("");
  return `<h2>What the model saw</h2><p class="q">${escapeHtml(question)}</p>
<p><b>main context</b> ${context.used.toLocaleString("en")}/${context.budget.toLocaleString("en")} tokens (num_ctx ${
    context.num_ctx.toLocaleString("en")})</p>
<div class="bar${context.pressure ? " pressure" : ""}" title="${share}% of the budget"><div style="width:${share}%"></div></div>
<table class="sections"><tr><th>section</th><th>tokens</th><th>items</th></tr>${rows}</table>
<h3>Pages</h3><table class="pages"><tr><th>where</th><th>symbol</th><th>tokens</th><th>relevance</th><th>why</th></tr>${
    pageRows}</table>`;
}
