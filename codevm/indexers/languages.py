"""Languages we parse with tree-sitter: file detection and tag queries.

The queries follow the tree-sitter ``tags.scm`` convention: ``@definition.<kind>`` marks a
definition whose name is ``@name``, ``@reference.call`` a call and ``@reference.import`` an
import. Every grammar comes from ``tree-sitter-language-pack`` 0.13, which bundles them in
its wheel, so nothing is downloaded at run time.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

# Bump when chunking or extraction changes: files indexed by another version are re-parsed.
# 2: functions in namespaces and Rust modules are functions; 3: chunks keep the names they
# define (the lexical index's text is made again from them)
EXTRACTOR_VERSION = "3"

# Definition kinds whose members become chunks of their own (a class chunk keeps its
# header and fields; its methods are separate chunks).
CONTAINER_KINDS = frozenset({"class", "interface", "enum", "module", "impl"})
# A function directly inside one of these is a method; inside a module or namespace it
# stays a function, except in Ruby, whose modules hold methods (mixins).
METHOD_OWNER_KINDS = CONTAINER_KINDS - {"module"}


@dataclass(frozen=True)
class LanguageSpec:
    name: str  # name in tree-sitter-language-pack
    query: str
    # node types that hold a definition's docstring/leading comments
    comment_types: tuple[str, ...] = ("comment",)
    # wrapper parents whose range belongs to the definition (decorators, export, ...)
    wrapper_types: tuple[str, ...] = ()
    # call names that are really imports (require, source, ...)
    import_calls: tuple[str, ...] = ()


_JS_COMMON = """
(function_declaration name: (identifier) @name) @definition.function
(generator_function_declaration name: (identifier) @name) @definition.function
(method_definition name: (property_identifier) @name) @definition.method
(variable_declarator name: (identifier) @name value: [(arrow_function) (function_expression)]) @definition.function
(call_expression function: [(identifier) @name (member_expression property: (property_identifier) @name)]) @reference.call
(new_expression constructor: (identifier) @name) @reference.call
(import_statement) @reference.import
"""

_JS = _JS_COMMON + """
(class_declaration name: (identifier) @name) @definition.class
"""

_TS = _JS_COMMON + """
(class_declaration name: (type_identifier) @name) @definition.class
(abstract_class_declaration name: (type_identifier) @name) @definition.class
(interface_declaration name: (type_identifier) @name) @definition.interface
(type_alias_declaration name: (type_identifier) @name) @definition.type
(enum_declaration name: (identifier) @name) @definition.enum
(internal_module name: (_) @name) @definition.module
"""

_C_COMMON = """
(function_definition declarator: (_) @name) @definition.function
(struct_specifier name: (type_identifier) @name body: (_)) @definition.class
(union_specifier name: (type_identifier) @name body: (_)) @definition.class
(enum_specifier name: (type_identifier) @name body: (_)) @definition.enum
(type_definition declarator: (type_identifier) @name) @definition.type
(preproc_function_def name: (identifier) @name) @definition.macro
(call_expression function: [(identifier) @name (field_expression field: (field_identifier) @name)]) @reference.call
(preproc_include) @reference.import
"""

_JS_WRAPPERS = ("export_statement", "lexical_declaration", "variable_declaration")

LANGUAGES: dict[str, LanguageSpec] = {
    "python": LanguageSpec(
        "python",
        """
(function_definition name: (identifier) @name) @definition.function
(class_definition name: (identifier) @name) @definition.class
(call function: [(identifier) @name (attribute attribute: (identifier) @name)]) @reference.call
(import_statement) @reference.import
(import_from_statement) @reference.import
""",
        wrapper_types=("decorated_definition",),
    ),
    "javascript": LanguageSpec("javascript", _JS, wrapper_types=_JS_WRAPPERS),
    "typescript": LanguageSpec("typescript", _TS, wrapper_types=_JS_WRAPPERS),
    "tsx": LanguageSpec("tsx", _TS, wrapper_types=_JS_WRAPPERS),
    "go": LanguageSpec(
        "go",
        """
(function_declaration name: (identifier) @name) @definition.function
(method_declaration receiver: (_) @owner name: (field_identifier) @name) @definition.method
(type_spec name: (type_identifier) @name) @definition.class
(call_expression function: [(identifier) @name (selector_expression field: (field_identifier) @name)]) @reference.call
(import_declaration) @reference.import
""",
        wrapper_types=("type_declaration",),
    ),
    "rust": LanguageSpec(
        "rust",
        """
(function_item name: (identifier) @name) @definition.function
(struct_item name: (type_identifier) @name) @definition.class
(enum_item name: (type_identifier) @name) @definition.enum
(union_item name: (type_identifier) @name) @definition.class
(trait_item name: (type_identifier) @name) @definition.interface
(impl_item type: (_) @name) @definition.impl
(mod_item name: (identifier) @name body: (_)) @definition.module
(macro_definition name: (identifier) @name) @definition.macro
(call_expression function: [(identifier) @name (field_expression field: (field_identifier) @name) (scoped_identifier name: (identifier) @name)]) @reference.call
(macro_invocation macro: (identifier) @name) @reference.call
(use_declaration) @reference.import
""",
        comment_types=("line_comment", "block_comment", "attribute_item"),
    ),
    "java": LanguageSpec(
        "java",
        """
(class_declaration name: (identifier) @name) @definition.class
(interface_declaration name: (identifier) @name) @definition.interface
(enum_declaration name: (identifier) @name) @definition.enum
(record_declaration name: (identifier) @name) @definition.class
(method_declaration name: (identifier) @name) @definition.method
(constructor_declaration name: (identifier) @name) @definition.method
(method_invocation name: (identifier) @name) @reference.call
(object_creation_expression type: (type_identifier) @name) @reference.call
(import_declaration) @reference.import
""",
        comment_types=("line_comment", "block_comment"),
    ),
    "c": LanguageSpec("c", _C_COMMON),
    "cpp": LanguageSpec(
        "cpp",
        _C_COMMON
        + """
(class_specifier name: (type_identifier) @name body: (_)) @definition.class
(namespace_definition name: (_) @name) @definition.module
(call_expression function: (qualified_identifier name: (identifier) @name)) @reference.call
""",
        wrapper_types=("template_declaration",),
    ),
    "csharp": LanguageSpec(
        "csharp",
        """
(class_declaration name: (identifier) @name) @definition.class
(interface_declaration name: (identifier) @name) @definition.interface
(struct_declaration name: (identifier) @name) @definition.class
(enum_declaration name: (identifier) @name) @definition.enum
(record_declaration name: (identifier) @name) @definition.class
(method_declaration name: (identifier) @name) @definition.method
(constructor_declaration name: (identifier) @name) @definition.method
(namespace_declaration name: (_) @name) @definition.module
(invocation_expression function: [(identifier) @name (member_access_expression name: (identifier) @name)]) @reference.call
(object_creation_expression type: (identifier) @name) @reference.call
(using_directive) @reference.import
""",
    ),
    "ruby": LanguageSpec(
        "ruby",
        """
(method name: (_) @name) @definition.method
(singleton_method name: (_) @name) @definition.method
(class name: (_) @name) @definition.class
(module name: (_) @name) @definition.module
(call method: (identifier) @name) @reference.call
""",
        import_calls=("require", "require_relative", "load"),
    ),
    "php": LanguageSpec(
        "php",
        """
(function_definition name: (name) @name) @definition.function
(class_declaration name: (name) @name) @definition.class
(interface_declaration name: (name) @name) @definition.interface
(trait_declaration name: (name) @name) @definition.interface
(enum_declaration name: (name) @name) @definition.enum
(method_declaration name: (name) @name) @definition.method
(function_call_expression function: [(name) @name (qualified_name (name) @name)]) @reference.call
(member_call_expression name: (name) @name) @reference.call
(scoped_call_expression name: (name) @name) @reference.call
(object_creation_expression [(name) @name (qualified_name (name) @name)]) @reference.call
(namespace_use_declaration) @reference.import
""",
    ),
    "kotlin": LanguageSpec(
        "kotlin",
        """
(class_declaration (type_identifier) @name) @definition.class
(object_declaration (type_identifier) @name) @definition.class
(function_declaration (simple_identifier) @name) @definition.function
(call_expression (simple_identifier) @name) @reference.call
(call_expression (navigation_expression (navigation_suffix (simple_identifier) @name))) @reference.call
(import_header) @reference.import
""",
        comment_types=("comment", "multiline_comment", "line_comment"),
    ),
    "swift": LanguageSpec(
        "swift",
        """
(class_declaration name: (_) @name) @definition.class
(protocol_declaration name: (_) @name) @definition.interface
(function_declaration name: (_) @name) @definition.function
(init_declaration) @definition.method
(call_expression (simple_identifier) @name) @reference.call
(call_expression (navigation_expression suffix: (navigation_suffix suffix: (simple_identifier) @name))) @reference.call
(import_declaration) @reference.import
""",
        comment_types=("comment", "multiline_comment"),
    ),
    "scala": LanguageSpec(
        "scala",
        """
(class_definition name: (identifier) @name) @definition.class
(object_definition name: (identifier) @name) @definition.class
(trait_definition name: (identifier) @name) @definition.interface
(function_definition name: (identifier) @name) @definition.function
(call_expression function: [(identifier) @name (field_expression field: (identifier) @name)]) @reference.call
(import_declaration) @reference.import
""",
        comment_types=("comment", "block_comment"),
    ),
    "bash": LanguageSpec(
        "bash",
        """
(function_definition name: (word) @name) @definition.function
(command name: (command_name (word) @name)) @reference.call
""",
        import_calls=("source", "."),
    ),
    "lua": LanguageSpec(
        "lua",
        """
(function_declaration name: (_) @name) @definition.function
(function_call name: [(identifier) @name (dot_index_expression field: (identifier) @name) (method_index_expression method: (identifier) @name)]) @reference.call
""",
        import_calls=("require",),
    ),
}

EXTENSIONS: dict[str, str] = {
    ".py": "python", ".pyi": "python", ".pyw": "python",
    ".js": "javascript", ".mjs": "javascript", ".cjs": "javascript", ".jsx": "javascript",
    ".ts": "typescript", ".mts": "typescript", ".cts": "typescript",
    ".tsx": "tsx",
    ".go": "go",
    ".rs": "rust",
    ".java": "java",
    ".c": "c", ".h": "c",
    ".cc": "cpp", ".cpp": "cpp", ".cxx": "cpp", ".c++": "cpp", ".hpp": "cpp", ".hh": "cpp",
    ".hxx": "cpp", ".h++": "cpp", ".ipp": "cpp", ".tpp": "cpp",
    ".cs": "csharp",
    ".rb": "ruby", ".rake": "ruby", ".gemspec": "ruby",
    ".php": "php",
    ".kt": "kotlin", ".kts": "kotlin",
    ".swift": "swift",
    ".scala": "scala", ".sc": "scala",
    ".sh": "bash", ".bash": "bash",
    ".lua": "lua",
    ".md": "markdown", ".markdown": "markdown", ".mdx": "markdown",
}

FILENAMES: dict[str, str] = {
    "Rakefile": "ruby", "Gemfile": "ruby", "Vagrantfile": "ruby",
    ".bashrc": "bash", ".bash_profile": "bash", ".profile": "bash",
}

_SHEBANGS = {"python": "python", "bash": "bash", "sh": "bash", "node": "javascript",
             "ruby": "ruby", "lua": "lua", "php": "php"}


def detect_language(path: str, head: bytes = b"") -> str:
    """Language of a file: a key of LANGUAGES, "markdown", or "text"."""
    base = os.path.basename(path)
    if base in FILENAMES:
        return FILENAMES[base]
    ext = os.path.splitext(base)[1].lower()
    if ext in EXTENSIONS:
        return EXTENSIONS[ext]
    if head.startswith(b"#!"):
        first = head.split(b"\n", 1)[0].decode("latin-1")
        parts = first[2:].strip().split()
        if parts:
            prog = os.path.basename(parts[0])
            if prog == "env" and len(parts) > 1:
                prog = parts[1]
            prog = prog.rstrip("0123456789.")
            if prog in _SHEBANGS:
                return _SHEBANGS[prog]
    return "text"
