"""codevm: virtual memory for code assistants."""

__version__ = "0.1.0"
