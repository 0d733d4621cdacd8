// The chat view: questions about the codebase, answers streamed from codevm.ask, citations
// that open the code, follow-ups in the same session, and what the model saw beside it.
import * as fs from "fs";
import * as path from "path";
import * as vscode from "vscode";

import { currentClient, openLocation } from "./server";
import { ContextReport, Page, contextHtml, segments } from "./logic";

interface AskResult {
  question: string;
  answer: string;
  session_id: string;
  model: string;
  model_used: boolean;
  notice: string;
  root: string;
  pages: Page[];
  citations: string[];
  context: ContextReport | null;
  truncated: boolean;
  cites_code: boolean;
}

let streams = 0;

export class ChatView implements vscode.WebviewViewProvider {
  private view?: vscode.WebviewView;
  private session?: string; // the conversation the next question continues
  private last?: AskResult;
  private pending: unknown[] = []; // messages for a view not yet shown
  private root = "";

  constructor(private readonly extensionUri: vscode.Uri) {}

  resolveWebviewView(view: vscode.WebviewView): void {
    this.view = view;
    const media = vscode.Uri.joinPath(this.extensionUri, "media");
    view.webview.options = { enableScripts: true, localResourceRoots: [media] };
    const script = view.webview.asWebviewUri(vscode.Uri.joinPath(media, "chat.js"));
    const style = view.webview.asWebviewUri(vscode.Uri.joinPath(media, "chat.css"));
    const nonce = Math.random().toString(36).slice(2) + Date.now().toString(36);
    view.webview.html = `<!DOCTYPE html><html><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src ${view.webview.cspSource} 'unsafe-inline'; script-src 'nonce-${nonce}';">
<link rel="stylesheet" href="${style}"></head><body>
<div id="log" aria-live="polite"><p class="hint">Ask about this codebase. Answers cite the code; follow-up questions continue the conversation.</p></div>
<form id="ask"><textarea id="question" rows="3" placeholder="How is ... computed? Where is ... called?"></textarea>
<div class="row"><button type="submit" id="send">Ask</button><button type="button" id="new" class="secondary">New conversation</button></div></form>
<script nonce="${nonce}" src="${script}"></script></body></html>`;
    view.webview.onDidReceiveMessage((m) => this.received(m));
    view.onDidDispose(() => (this.view = undefined));
    for (const message of this.pending.splice(0)) {
      void view.webview.postMessage(message);
    }
  }

  private post(message: unknown): void {
    if (this.view) {
      void this.view.webview.postMessage(message);
    } else {
      this.pending.push(message);
    }
  }

  private async received(m: { type: string; question?: string; path?: string; line?: number; end?: number }): Promise<void> {
    if (m.type === "ask" && m.question) {
      await this.ask(m.question);
    } else if (m.type === "new") {
      this.newConversation();
    } else if (m.type === "context") {
      this.showContext();
    } else if (m.type === "open" && m.path) {
      await this.open(m.path, m.line ?? 1, m.end);
    }
  }

  private async open(rel: string, line: number, end?: number): Promise<void> {
    const page = this.last?.pages.find((p) => p.path === rel && p.uri);
    const uri = page?.uri ?? vscode.Uri.file(path.join(this.root || this.last?.root || "", rel)).toString();
    try {
      await openLocation(uri, line, end);
    } catch (e) {
      void vscode.window.showErrorMessage(`codevm: cannot open ${rel}: ${(e as Error).message}`);
    }
  }

  newConversation(): void {
    this.session = undefined;
    this.post({ type: "cleared" });
  }

  delta(stream: string, text: string): void {
    this.post({ type: "delta", id: stream, text });
  }

  status(stream: string, message: string): void {
    this.post({ type: "status", id: stream, message });
  }

  /** Ask in this view: the answer streams in, then its citations become links. */
  async ask(question: string): Promise<AskResult | undefined> {
    await vscode.commands.executeCommand("codevm.chat.focus");
    const id = `chat-${++streams}`;
    this.post({ type: "start", id, question });
    const client = currentClient();
    if (!client) {
      this.post({ type: "error", id, message: "codevm is not running: see the status bar, or run 'codevm: Restart the Language Server'." });
      return undefined;
    }
    const active = vscode.window.activeTextEditor?.document.uri;
    const folder = (active && vscode.workspace.getWorkspaceFolder(active)) ?? vscode.workspace.workspaceFolders?.[0];
    const args: Record<string, unknown> = { question, stream: id };
    if (folder) {
      args.uri = folder.uri.toString();
    }
    if (this.session && this.root === (folder?.uri.fsPath ?? this.root)) {
      args.session = this.session;
    } else {
      args.newSession = true;
    }
    let result: AskResult;
    try {
      result = (await client.sendRequest("workspace/executeCommand", { command: "codevm.ask", arguments: [args] })) as AskResult;
    } catch (e) {
      this.post({ type: "error", id, message: (e as Error).message });
      return undefined;
    }
    this.session = result.session_id;
    this.root = result.root;
    this.last = result;
    const exists = (rel: string) => {
      const file = path.resolve(result.root, rel);
      return file.startsWith(path.resolve(result.root) + path.sep) && fs.existsSync(file);
    };
    const cited = result.answer ? segments(result.answer, result.pages, exists) : [];
    this.post({
      type: "done",
      id,
      answered: Boolean(result.answer),
      segments: cited,
      notice: result.answer ? (result.truncated ? "The answer was cut at its length limit." : "")
        : `No model answered: ${result.notice}`,
      pages: result.pages.map((p) => ({ path: p.path, line: p.start_line, end: p.end_line, citation: p.citation, symbol: p.symbol })),
      used: result.context ? `${result.context.used.toLocaleString("en")}/${result.context.budget.toLocaleString("en")} tokens` : "",
      model: result.model,
    });
    return result;
  }

  /** The working set of the last answer, beside the editor. */
  showContext(): void {
    if (!this.last) {
      void vscode.window.showInformationMessage("codevm: ask a question first; then this shows what the model saw.");
      return;
    }
    const last = this.last;
    const panel = vscode.window.createWebviewPanel("codevm.context", "codevm: what the model saw",
      { viewColumn: vscode.ViewColumn.Beside, preserveFocus: true }, { enableScripts: true });
    const nonce = Math.random().toString(36).slice(2);
    panel.webview.html = `<!DOCTYPE html><html><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; script-src 'nonce-${nonce}';">
<style>body{font-family:var(--vscode-font-family);font-size:var(--vscode-font-size);color:var(--vscode-foreground)}
.bar{height:10px;background:var(--vscode-editorWidget-border);margin:6px 0 12px}.bar div{height:100%;background:var(--vscode-charts-green)}
.bar.pressure div{background:var(--vscode-charts-red)}td,th{text-align:left;vertical-align:top;padding:2px 8px}.n{text-align:right}
.q{font-style:italic}a{color:var(--vscode-textLink-foreground)}</style></head><body>${
      contextHtml(last.context, last.pages, last.question)}
<script nonce="${nonce}">const vscode=acquireVsCodeApi();document.addEventListener("click",e=>{const a=e.target.closest("a.cite");
if(a){e.preventDefault();vscode.postMessage({type:"open",path:a.dataset.path,line:+a.dataset.line,end:+a.dataset.end});}});</script></body></html>`;
    panel.webview.onDidReceiveMessage((m) => {
      if (m.type === "open") {
        void this.open(m.path, m.line, m.end);
      }
    });
  }
}

