// The chat view's page: sends questions to the extension, shows the answer as it streams,
// then the answer with its citations as links. Text is only ever set as text, never HTML.
(function () {
  const vscode = acquireVsCodeApi();
  const log = document.getElementById("log");
  const form = document.getElementById("ask");
  const question = document.getElementById("question");
  const send = document.getElementById("send");
  const turns = new Map(); // stream id -> its elements

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function link(text, path, line, end) {
    const a = el("a", "cite", text);
    a.href = "#";
    a.dataset.path = path;
    a.dataset.line = String(line);
    a.dataset.end = String(end);
    a.title = `Open ${path}:${line}-${end}`;
    return a;
  }

  // The answer's Markdown, the little of it models write: ``` fences become code blocks,
  // `inline code` code; citations stay links (in code too). Text is set as text only.
  function render(segments) {
    const out = [];
    let block = null; // the <code> of an open fence
    const put = (node) => (block ? block.append(node) : out.push(node));
    for (const s of segments) {
      if (s.path) {
        put(link(s.text, s.path, s.line, s.endLine));
        continue;
      }
      const parts = s.text.split(/```[\w+-]*\n?/);
      parts.forEach((part, i) => {
        if (i > 0) { // a fence: open or close a block
          if (block) {
            block = null;
          } else {
            const pre = el("pre");
            block = el("code");
            pre.append(block);
            out.push(pre);
          }
        }
        if (!part) return;
        if (block) {
          block.append(document.createTextNode(part));
          return;
        }
        part.split(/(`[^`\n]+`)/).forEach((bit) => {
          if (/^`[^`\n]+`$/.test(bit)) put(el("code", "", bit.slice(1, -1)));
          else if (bit) put(document.createTextNode(bit));
        });
      });
    }
    return out;
  }

  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const text = question.value.trim();
    if (!text || send.disabled) return;
    question.value = "";
    vscode.postMessage({ type: "ask", question: text });
  });
  question.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) {
      e.preventDefault();
      form.requestSubmit();
    }
  });
  document.getElementById("new").addEventListener("click", () => vscode.postMessage({ type: "new" }));
  log.addEventListener("click", (e) => {
    const a = e.target.closest("a.cite");
    if (a) {
      e.preventDefault();
      vscode.postMessage({ type: "open", path: a.dataset.path, line: +a.dataset.line, end: +a.dataset.end });
    }
    if (e.target.closest("button.context")) vscode.postMessage({ type: "context" });
  });

  window.addEventListener("message", ({ data: m }) => {
    if (m.type === "cleared") {
      log.replaceChildren(el("p", "hint", "New conversation. Ask about this codebase."));
      return;
    }
    if (m.type === "start") {
      log.querySelector(".hint")?.remove();
      const turn = el("div", "turn");
      turn.dataset.id = m.id;
      const answer = el("div", "answer");
      const status = el("div", "status", "asking...");
      turn.append(el("div", "question", m.question), answer, status);
      log.append(turn);
      turns.set(m.id, { turn, answer, status, text: "" });
      send.disabled = true;
      turn.scrollIntoView({ block: "end" });
      return;
    }
    const t = turns.get(m.id);
    if (!t) return;
    if (m.type === "status") {
      t.status.textContent = m.message;
    } else if (m.type === "delta") {
      t.text += m.text;
      t.answer.textContent = t.text;
      t.status.textContent = "writing...";
      t.turn.scrollIntoView({ block: "end" });
    } else if (m.type === "error") {
      t.status.className = "status error";
      t.status.textContent = m.message;
      send.disabled = false;
    } else if (m.type === "done") {
      t.answer.replaceChildren(...render(m.segments));
      t.answer.classList.add("done");
      t.status.remove();
      if (m.notice) t.turn.append(el("div", "notice", m.notice));
      if (m.pages.length) {
        const sources = el("div", "sources meta", m.answered ? "Pages read: " : "Code codevm selected: ");
        for (const p of m.pages) sources.append(link(p.citation, p.path, p.line, p.end));
        t.turn.append(sources);
      }
      const meta = el("div", "meta", [m.model, m.used].filter(Boolean).join(" · ") + " ");
      const button = el("button", "secondary context", "What the model saw");
      meta.append(button);
      t.turn.append(meta);
      send.disabled = false;
      t.turn.scrollIntoView({ block: "end" });
    }
  });
})();
