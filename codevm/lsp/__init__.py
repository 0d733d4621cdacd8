"""codevm's memory inside editors, over the Language Server Protocol."""
