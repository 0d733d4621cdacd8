// codevm for VS Code: starts `codevm lsp`, shows its state in the status bar, and gives the
// chat view, search, notes and core memory. Everything goes through the language server
// (its commands and codevm/* notifications, documented in codevm's README), so the shared
// index, notes and conversations are the same as in the CLI and over MCP.
import * as vscode from "vscode";
import { LanguageClient, LanguageClientOptions, ServerOptions, State } from "vscode-languageclient/node";


import { ChatView } from "./chat";
import { findCodevm } from "./logic";
import { currentClient, openLocation, run, server } from "./server";
import { MemoryTree, NotesTree } from "./trees";

let statusItem: vscode.StatusBarItem;
let statusTimer: NodeJS.Timeout | undefined;
const indexing = new Map<string, string>(); // folder -> what indexing/embedding says now

function setStatus(text: string, tooltip: string, error = false): void {
  statusItem.text = text;
  statusItem.tooltip = tooltip;
  statusItem.backgroundColor = error ? new vscode.ThemeColor("statusBarItem.errorBackground") : undefined;
  statusItem.command = error ? "codevm.restart" : "codevm.openChat";
  statusItem.show();
}

interface Status {
  root: string;
  files: number;
  chunks: number;
  process: number;
  watching: boolean;
  pending_changes: number;
  watch_error: string;
  folders: string[];
  embeddings: { state: string; embedded: number; total: number; embedder: string; message: string };
}

async function refreshStatus(): Promise<void> {
  const c = currentClient();
  if (!c) {
    return;
  }
  if (indexing.size) {
    setStatus(`$(sync~spin) codevm: ${[...indexing.values()].join("; ")}`, "codevm is indexing the workspace");
    return;
  }
  try {
    const s = (await c.sendRequest("workspace/executeCommand", { command: "codevm.status", arguments: [] })) as Status;
    const e = s.embeddings;
    const embedding = e.state === "running" || e.state === "waiting"
      ? ` · embedding ${Math.floor((100 * e.embedded) / Math.max(e.total, 1))}%` : "";
    const tooltip = new vscode.MarkdownString([
      `**codevm** — ${s.folders.length} folder${s.folders.length === 1 ? "" : "s"}`,
      `- index: ${s.files} files, ${s.chunks} chunks`,
      `- embeddings: ${e.state}${e.embedder ? ` (${e.embedder})` : ""}, ${e.embedded}/${e.total}${e.message ? ` — ${e.message}` : ""}`,
      `- service: running (pid ${s.process})${s.watching ? ", watching files" : ", not watching files"}${
        s.pending_changes ? `, ${s.pending_changes} changes waiting` : ""}${s.watch_error ? ` — ${s.watch_error}` : ""}`,
      "", "Click to ask about the codebase."].join("\n"));
    setStatus(`$(database) codevm: ${s.files} files${embedding}`, "");
    statusItem.tooltip = tooltip;
  } catch (err) {
    setStatus("$(warning) codevm", `codevm.status failed: ${(err as Error).message}`);
  }
}

async function start(context: vscode.ExtensionContext, chat: ChatView, trees: (NotesTree | MemoryTree)[]): Promise<void> {
  const config = vscode.workspace.getConfiguration("codevm");
  const command = findCodevm(config.get<string>("path") ?? "", process.env.PATH ?? "", process.platform === "win32");
  if (!command) {
    const where = config.get<string>("path") ? `at ${config.get<string>("path")} (codevm.path)` : "on PATH";
    setStatus("$(error) codevm: not found", `The codevm command was not found ${where}.`, true);
    const choice = await vscode.window.showErrorMessage(
      `codevm: the codevm command was not found ${where}. Install it (pip install codevm) or set codevm.path.`,
      "Open Settings");
    if (choice) {
      void vscode.commands.executeCommand("workbench.action.openSettings", "codevm.path");
    }
    return;
  }
  const options: Record<string, unknown> = { notifications: true };
  for (const key of ["model", "ollamaHost", "budget"]) {
    const value = config.get(key);
    if (value !== "" && value !== null && value !== undefined) {
      options[key] = value;
    }
  }
  const serverOptions: ServerOptions = { command, args: ["lsp"] };
  const clientOptions: LanguageClientOptions = {
    documentSelector: [{ scheme: "file" }],
    initializationOptions: options,
    middleware: {
      // the server's code actions, in this editor's own views
      executeCommand: async (cmd, args, next) => {
        const first = args[0] as Record<string, unknown> | undefined;
        if (cmd === "codevm.ask" && first && typeof first.question === "string" && first.stream === undefined) {
          return chat.ask(first.question);
        }
        if (cmd === "codevm.remember" && first && typeof first === "object" && !first.text) {
          const text = await vscode.window.showInputBox({ prompt: `A note about ${first.symbol ?? first.path ?? "this code"}` });
          if (!text) {
            return undefined;
          }
          const note = await next(cmd, [{ ...first, text }]);
          trees.forEach((t) => t.refresh());
          return note;
        }
        return next(cmd, args);
      },
    },
  };
  const client = new LanguageClient("codevm", "codevm", serverOptions, clientOptions);
  server.client = client;
  client.onDidChangeState((e) => {
    if (e.newState === State.Stopped) {
      setStatus("$(error) codevm: stopped", "The codevm language server stopped: click to restart it.", true);
    }
  });
  setStatus("$(sync~spin) codevm: starting", `${command} lsp`);
  try {
    await client.start();
  } catch (err) {
    setStatus("$(error) codevm: failed", `codevm lsp did not start: ${(err as Error).message}`, true);
    void vscode.window.showErrorMessage(`codevm lsp did not start: ${(err as Error).message}`);
    return;
  }
  context.subscriptions.push(
    client.onNotification("codevm/progress", (p: { root: string; phase: string; message: string }) => {
      if (p.phase === "indexing" || p.phase === "embedding") {
        indexing.set(p.root, p.phase === "embedding" ? `embedding ${p.message}` : p.message);
        setStatus(`$(sync~spin) codevm: ${[...indexing.values()].join("; ")}`, `codevm is ${p.phase}`);
      } else {
        indexing.delete(p.root);
        void refreshStatus();
        trees.forEach((t) => t.refresh());
      }
    }),
    client.onNotification("codevm/answer", (p: { stream: string; text: string }) => chat.delta(p.stream, p.text)),
    client.onNotification("codevm/status", (p: { stream: string; message: string }) => chat.status(p.stream, p.message)),
  );
  trees.forEach((t) => t.refresh());
  void refreshStatus();
}

export async function activate(context: vscode.ExtensionContext): Promise<void> {
  statusItem = vscode.window.createStatusBarItem(vscode.StatusBarAlignment.Left, 10);
  statusItem.name = "codevm";
  context.subscriptions.push(statusItem);
  const chat = new ChatView(context.extensionUri);
  const notes = new NotesTree();
  const memory = new MemoryTree();
  const trees = [notes, memory];
  context.subscriptions.push(
    vscode.window.registerWebviewViewProvider("codevm.chat", chat, { webviewOptions: { retainContextWhenHidden: true } }),
    vscode.window.registerTreeDataProvider("codevm.notes", notes),
    vscode.window.registerTreeDataProvider("codevm.memory", memory),
    vscode.commands.registerCommand("codevm.openChat", async (question?: string) => {
      await vscode.commands.executeCommand("codevm.chat.focus");
      if (typeof question === "string" && question) {
        return chat.ask(question);
      }
      return undefined;
    }),
    vscode.commands.registerCommand("codevm.newConversation", () => chat.newConversation()),
    vscode.commands.registerCommand("codevm.showContext", () => chat.showContext()),
    vscode.commands.registerCommand("codevm.refreshMemory", () => trees.forEach((t) => t.refresh())),
    vscode.commands.registerCommand("codevm.searchCode", searchCode),
    vscode.commands.registerCommand("codevm.rememberSelection", async () => {
      await rememberSelection();
      trees.forEach((t) => t.refresh());
    }),
    vscode.commands.registerCommand("codevm.openLocation", openLocation),
    vscode.commands.registerCommand("codevm.restart", async () => {
      if (server.client) {
        await server.client.stop().catch(() => undefined);
        server.client = undefined;
      }
      await start(context, chat, trees);
    }),
  );
  statusTimer = setInterval(() => void refreshStatus(), 5000);
  await start(context, chat, trees);
}

export async function deactivate(): Promise<void> {
  if (statusTimer) {
    clearInterval(statusTimer);
  }
  await server.client?.stop();
}

interface Hit {
  path: string;
  uri: string;
  start_line: number;
  end_line: number;
  symbol: string;
  kind: string;
  score: number;
  snippet: string;
  signature: string;
}

async function searchCode(): Promise<void> {
  const query = await vscode.window.showInputBox({ prompt: "Search the codebase (words, a symbol, a question)" });
  if (!query) {
    return;
  }
  const hits = await run<Hit[]>("codevm.search", { query, k: 30 });
  if (!hits) {
    return;
  }
  if (!hits.length) {
    void vscode.window.showInformationMessage(`codevm: nothing found for "${query}"`);
    return;
  }
  const picked = await vscode.window.showQuickPick(hits.map((h) => ({
    label: h.symbol || h.path,
    description: `${h.path}:${h.start_line}-${h.end_line}`,
    detail: (h.signature || (h.snippet ?? "").split("\n").map((l) => l.trim()).filter(Boolean).slice(0, 2).join("  ⏎  ")).slice(0, 200),
    hit: h,
  })), { matchOnDescription: true, matchOnDetail: true, placeHolder: `${hits.length} hits for "${query}"` });
  if (picked) {
    await openLocation(picked.hit.uri, picked.hit.start_line, picked.hit.end_line);
  }
}

async function rememberSelection(): Promise<void> {
  const editor = vscode.window.activeTextEditor;
  if (!editor) {
    void vscode.window.showInformationMessage("codevm: open a file and select the code the note is about");
    return;
  }
  const uri = editor.document.uri.toString();
  const wordRange = editor.document.getWordRangeAtPosition(editor.selection.start);
  const symbol = wordRange ? editor.document.getText(wordRange) : undefined;
  const text = await vscode.window.showInputBox({
    prompt: `A note about ${symbol ?? vscode.workspace.asRelativePath(editor.document.uri)} (codevm keeps it with the project)`,
  });
  if (!text) {
    return;
  }
  const path = vscode.workspace.asRelativePath(editor.document.uri, false);
  const note = await run<{ id: number }>("codevm.remember", { text, path, symbol, uri });
  if (note) {
    void vscode.window.showInformationMessage(`codevm: note ${note.id} remembered`);
  }
}
