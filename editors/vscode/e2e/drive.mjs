// Drives the codevm extension in a real VS Code (code-server) with Chromium: open the chat
// view from the command palette, ask a question, watch the answer stream in, click its
// citation, and read what the editor and the status bar show. Prints one JSON object.
// Usage: node drive.mjs <code-server url> <folder> <screenshot.png>
import { chromium } from "playwright-core";

const [url, folder, shot] = process.argv.slice(2);
const out = { steps: [] };
const step = (name, extra = {}) => out.steps.push({ name, at: Date.now() - started, ...extra });
const started = Date.now();
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync"],
});
const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });

async function chatFrame(timeout) {
  const deadline = Date.now() + timeout;
  while (Date.now() < deadline) {
    for (const frame of page.frames()) {
      try {
        if (await frame.$("#question")) return frame;
      } catch { /* a frame that went away */ }
    }
    await page.waitForTimeout(250);
  }
  throw new Error("the chat view did not appear");
}

async function runCommand(title) {
  await page.keyboard.press("F1");
  await page.waitForSelector(".quick-input-widget", { state: "visible" });
  await page.keyboard.type(title);
  await page.waitForTimeout(500);
  await page.keyboard.press("Enter");
  await page.waitForTimeout(300);
}

try {
  await page.goto(`${url}/?folder=${encodeURIComponent(folder)}`);
  await page.waitForSelector(".monaco-workbench", { timeout: 90000 });
  step("workbench");
  // the status bar item: the extension started codevm lsp and the index is there
  const status = page.locator("#codevm\\.codevm, .statusbar-item:has-text('codevm')").first();
  await status.waitFor({ timeout: 90000 });
  await page.waitForFunction(() => [...document.querySelectorAll(".statusbar-item")]
    .some((e) => /codevm: [1-9]\d* files/.test(e.textContent ?? "")), null, { timeout: 120000 });
  out.statusBar = await page.evaluate(() => [...document.querySelectorAll(".statusbar-item")]
    .map((e) => e.textContent?.trim() ?? "").find((t) => t.startsWith("codevm")));
  step("status bar", { text: out.statusBar });

  await runCommand("codevm: Ask About the Codebase");
  const chat = await chatFrame(60000);
  step("chat view");

  await chat.fill("#question", "How is the total area of the shapes computed?");
  await chat.press("#question", "Enter");
  // streaming: the answer grows while the status says the model is writing
  const seen = new Set();
  const deadline = Date.now() + 120000;
  while (Date.now() < deadline) {
    const state = await chat.evaluate(() => {
      const turn = document.querySelector(".turn:last-child");
      return turn && { text: turn.querySelector(".answer")?.textContent ?? "", status: turn.querySelector(".status")?.textContent ?? "",
        done: !!turn.querySelector(".answer.done") };
    });
    if (state) {
      if (!state.done && state.text) seen.add(state.text.length);
      if (state.status) out.lastStatus = state.status;
      if (state.done) break;
    }
    await page.waitForTimeout(50);
  }
  out.partialLengths = [...seen].sort((a, b) => a - b);
  out.answer = await chat.textContent(".turn:last-child .answer.done");
  out.codeBlocks = await chat.$$eval(".turn:last-child .answer pre code", (cs) => cs.map((c) => c.textContent));
  out.inlineCode = await chat.$$eval(".turn:last-child .answer > code", (cs) => cs.map((c) => c.textContent));
  out.citations = await chat.$$eval(".turn:last-child .answer a.cite", (as) => as.map((a) => ({ text: a.textContent, path: a.dataset.path, line: +a.dataset.line, end: +a.dataset.end })));
  out.pagesRead = await chat.$$eval(".turn:last-child .sources a.cite", (as) => as.map((a) => a.textContent));
  out.meta = await chat.textContent(".turn:last-child .meta:last-child");
  step("answer", { streamedPieces: out.partialLengths.length });

  await chat.click(".turn:last-child .answer a.cite");
  await page.waitForFunction(() => /shapes\.py/.test(document.querySelector(".tab.active")?.textContent ?? ""), null, { timeout: 30000 });
  out.activeTab = (await page.textContent(".tab.active"))?.trim();
  const cursorAt = () => page.locator(".statusbar-item:has-text('Ln ')").first().textContent();
  for (let i = 0; i < 50 && !/Ln 21,/.test((await cursorAt()) ?? ""); i++) await page.waitForTimeout(100);
  out.cursor = (await cursorAt())?.trim();
  step("citation opened", { tab: out.activeTab, cursor: out.cursor });

  // a follow-up continues the session
  const chat2 = await chatFrame(10000);
  await chat2.fill("#question", "And where is it called?");
  await chat2.press("#question", "Enter");
  await chat2.waitForSelector(".turn:nth-child(2) .answer.done", { timeout: 120000 });
  out.followUp = await chat2.textContent(".turn:nth-child(2) .answer.done");
  step("follow-up");

  // what the model saw, beside the answer
  await chat2.click(".turn:nth-child(2) button.context");
  let context = null;
  const until = Date.now() + 30000;
  while (!context && Date.now() < until) {
    for (const frame of page.frames()) {
      try {
        if (await frame.$("table.sections")) context = frame;
      } catch { /* gone */ }
    }
    await page.waitForTimeout(250);
  }
  out.contextPicture = context ? (await context.textContent("body")).replace(/\s+/g, " ").slice(0, 400) : null;
  step("context picture");

  // search: a quick pick of hits; the first opens its file
  await runCommand("codevm: Search the Codebase");
  await page.keyboard.type("scale a circle by a factor");
  await page.keyboard.press("Enter");
  await page.waitForSelector(".quick-input-list .monaco-list-row", { timeout: 30000 });
  out.searchHits = await page.$$eval(".quick-input-list .monaco-list-row", (rows) => rows.slice(0, 3).map((r) => r.textContent?.replace(/\s+/g, " ").trim()));
  await page.keyboard.press("Enter");
  for (let i = 0; i < 50 && !/Ln 17,/.test((await cursorAt()) ?? ""); i++) await page.waitForTimeout(100);
  out.searchOpened = (await cursorAt())?.trim();
  step("search", { hits: out.searchHits.length });

  // remember a note on the selection: it appears in the notes view
  await runCommand("codevm: Remember a Note on the Selection");
  await page.keyboard.type("scale returns a new Circle; the old one is unchanged");
  await page.keyboard.press("Enter");
  await page.waitForFunction(() => [...document.querySelectorAll(".monaco-list-row")]
    .some((r) => (r.textContent ?? "").includes("scale returns a new Circle")), null, { timeout: 30000 });
  out.noteInTree = await page.evaluate(() => [...document.querySelectorAll(".monaco-list-row")]
    .map((r) => r.textContent ?? "").find((t) => t.includes("scale returns a new Circle")));
  step("note remembered");
  out.ok = true;
} catch (e) {
  out.ok = false;
  out.error = String(e).slice(0, 2000);
} finally {
  if (shot) await page.screenshot({ path: shot }).catch(() => undefined);
  await browser.close();
  out.seconds = (Date.now() - started) / 1000;
  console.log(JSON.stringify(out));
}
