// The running `codevm lsp` and what talks to it.
import * as vscode from "vscode";
import { LanguageClient, State } from "vscode-languageclient/node";

export const server: { client?: LanguageClient } = {};

export function currentClient(): LanguageClient | undefined {
  return server.client?.state === State.Running ? server.client : undefined;
}

/** A codevm command on the server; undefined and a message when it is not running. */
export async function run<T>(command: string, ...args: unknown[]): Promise<T | undefined> {
  const c = currentClient();
  if (!c) {
    void vscode.window.showErrorMessage("codevm is not running (see the status bar): start it with 'codevm: Restart the Language Server'.");
    return undefined;
  }
  try {
    return (await c.sendRequest("workspace/executeCommand", { command, arguments: args })) as T;
  } catch (e) {
    void vscode.window.showErrorMessage(`codevm: ${(e as Error).message}`);
    return undefined;
  }
}

/** Open a file at 1-based lines, selecting them. */
export async function openLocation(uri: string, line: number, endLine?: number): Promise<void> {
  const doc = await vscode.workspace.openTextDocument(vscode.Uri.parse(uri));
  const last = Math.max(doc.lineCount - 1, 0);
  const start = Math.min(Math.max(line - 1, 0), last);
  const end = Math.min(Math.max((endLine ?? line) - 1, start), last);
  // the lines selected, the cursor at their start (where reading begins)
  const selection = new vscode.Selection(end, doc.lineAt(end).text.length, start, 0);
  const editor = await vscode.window.showTextDocument(doc, { preview: true });
  editor.selection = selection;
  editor.revealRange(selection, vscode.TextEditorRevealType.InCenterIfOutsideViewport);
}

