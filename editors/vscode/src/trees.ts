// Tree views of the project's memory: notes (stale ones marked) and core memory blocks.
import * as vscode from "vscode";

import { currentClient } from "./server";

interface Note {
  id: number;
  text: string;
  tags: string[];
  path: string | null;
  symbol: string | null;
  uri?: string;
  stale: boolean;
  updated_at: string;
}

interface CoreBlock {
  label: string;
  value: string;
  limit: number;
}

abstract class Tree<T> implements vscode.TreeDataProvider<T> {
  private changed = new vscode.EventEmitter<T | undefined>();
  readonly onDidChangeTreeData = this.changed.event;
  protected items: T[] = [];
  protected problem = "";

  abstract command: string;
  abstract item(element: T): vscode.TreeItem;

  refresh(): void {
    const client = currentClient();
    if (!client) {
      return;
    }
    client.sendRequest("workspace/executeCommand", { command: this.command, arguments: [] }).then(
      (items) => { this.items = items as T[]; this.problem = ""; this.changed.fire(undefined); },
      (e: Error) => { this.items = []; this.problem = e.message; this.changed.fire(undefined); });
  }

  getTreeItem(element: T): vscode.TreeItem {
    return this.item(element);
  }

  getChildren(element?: T): T[] {
    return element ? this.children(element) : this.items;
  }

  protected children(_element: T): T[] {
    return [];
  }
}

export class NotesTree extends Tree<Note> {
  command = "codevm.notes";

  item(note: Note): vscode.TreeItem {
    const first = note.text.split("\n")[0];
    const item = new vscode.TreeItem(first.length > 80 ? first.slice(0, 79) + "…" : first);
    const where = [note.path, note.symbol].filter(Boolean).join(" · ");
    item.description = (note.stale ? "stale · " : "") + where;
    item.iconPath = new vscode.ThemeIcon(note.stale ? "warning" : "note");
    item.tooltip = new vscode.MarkdownString(`**note ${note.id}**${note.stale
      ? " — *stale: the code it is about changed since*" : ""}\n\n${note.text}\n\n${where}${
      note.tags.length ? `\n\ntags: ${note.tags.join(", ")}` : ""}`);
    item.contextValue = note.stale ? "codevm.staleNote" : "codevm.note";
    if (note.uri) {
      item.command = { command: "vscode.open", title: "Open", arguments: [vscode.Uri.parse(note.uri)] };
    }
    return item;
  }
}

type MemoryItem = CoreBlock | { line: string };

export class MemoryTree extends Tree<MemoryItem> {
  command = "codevm.coreMemory";

  item(element: MemoryItem): vscode.TreeItem {
    if ("line" in element) {
      return new vscode.TreeItem(element.line);
    }
    const item = new vscode.TreeItem(element.label, element.value.trim()
      ? vscode.TreeItemCollapsibleState.Expanded : vscode.TreeItemCollapsibleState.None);
    item.description = `${element.value.length}/${element.limit} characters`;
    item.tooltip = element.value || "(empty)";
    item.iconPath = new vscode.ThemeIcon("symbol-field");
    return item;
  }

  protected children(element: MemoryItem): MemoryItem[] {
    return "line" in element ? [] : element.value.split("\n").filter((l) => l.trim()).map((line) => ({ line }));
  }
}
