"""codevm's memory as MCP tools, resources and prompts for other assistants."""
