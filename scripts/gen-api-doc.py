#!/usr/bin/env python3
"""Writes docs/api.md, the API reference, from the comments in proto/palisade/v1/*.proto.

The .proto files are the API documentation (STYLE.md, "Protobuf and database"): this script
only renders them. For every file it lists the services with their RPCs (request, response,
streaming, the leading `//` comment), every message with a table of its fields (name,
number, type with repeated/map/optional/oneof, comment), nested messages and enums, and every
enum with its values. Output is deterministic: files in name order, declarations in source
order, nothing taken from the clock or the environment.

    scripts/gen-api-doc.py            # (re)write docs/api.md
    scripts/gen-api-doc.py --check    # exit 1 with a unified diff if docs/api.md is stale
    scripts/gen-api-doc.py --lint     # also exit 1 if a declaration has no comment

Comments: the comment lines directly above a declaration (no blank line in between) are its
leading comment; a `//` or `/* */` comment after a field's or value's `;` on the same line
is its trailing comment, appended to the leading one. The comment directly above `syntax`
describes the file. Python 3 standard library only.
"""

from __future__ import annotations

import argparse
import difflib
import pathlib
import re
import sys
from dataclasses import dataclass, field

ROOT = pathlib.Path(__file__).resolve().parent.parent
DEFAULT_PROTO_DIR = ROOT / "proto" / "palisade" / "v1"
DEFAULT_OUTPUT = ROOT / "docs" / "api.md"


class ParseError(Exception):
    """A construct the parser does not understand, with its place."""

    def __init__(self, path: str, line: int, message: str) -> None:
        super().__init__(f"{path}:{line}: {message}")


# --------------------------------------------------------------------------------------
# Tokens


@dataclass
class Token:
    kind: str  # "ident", "int", "float", "string", "sym"
    text: str
    line: int


@dataclass
class Comment:
    first_line: int
    last_line: int
    text: list[str]  # lines without the comment markers
    trailing_of: int | None = None  # line of the code this comment ends, if it shares it
    after_token: int = -1  # index of the token directly before the comment


TOKEN_RE = re.compile(
    r"""
    (?P<ws>[ \t\r\f\v]+)
  | (?P<nl>\n)
  | (?P<line_comment>//[^\n]*)
  | (?P<block_comment>/\*.*?\*/)
  | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
  | (?P<float>-?(?:\d+\.\d*|\.\d+)(?:[eE][+-]?\d+)?|-?\d+[eE][+-]?\d+|-?inf\b|-?nan\b)
  | (?P<int>-?(?:0[xX][0-9a-fA-F]+|\d+))
  | (?P<ident>\.?[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
  | (?P<sym>[{}()\[\];=<>,:/+-])
    """,
    re.VERBOSE | re.DOTALL,
)


def strip_line_comment(raw: str) -> str:
    body = raw[2:]
    # `/// text` and `//! text` are still plain comments in proto files.
    return body[1:] if body.startswith(" ") else body


def strip_block_comment(raw: str) -> list[str]:
    body = raw[2:-2]
    lines = body.split("\n")
    out = []
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("*"):
            stripped = stripped[1:]
            if stripped.startswith(" "):
                stripped = stripped[1:]
        out.append(stripped.rstrip())
    while out and not out[0].strip():
        out.pop(0)
    while out and not out[-1].strip():
        out.pop()
    return out


def tokenize(path: str, text: str) -> tuple[list[Token], list[Comment]]:
    tokens: list[Token] = []
    comments: list[Comment] = []
    line = 1
    pos = 0
    last_code_line = 0
    while pos < len(text):
        m = TOKEN_RE.match(text, pos)
        if not m:
            raise ParseError(path, line, f"unexpected character {text[pos]!r}")
        kind = m.lastgroup
        value = m.group()
        if kind == "nl":
            line += 1
        elif kind == "line_comment":
            comments.append(
                Comment(line, line, [strip_line_comment(value).rstrip()],
                        trailing_of=line if last_code_line == line else None,
                        after_token=len(tokens) - 1)
            )
        elif kind == "block_comment":
            end = line + value.count("\n")
            comments.append(
                Comment(line, end, strip_block_comment(value),
                        trailing_of=line if last_code_line == line else None,
                        after_token=len(tokens) - 1)
            )
            line = end
        elif kind != "ws":
            tokens.append(Token(kind, value, line))
            last_code_line = line
        pos = m.end()
    return tokens, comments


# --------------------------------------------------------------------------------------
# Model


@dataclass
class Field:
    name: str
    number: str
    type: str  # as written (value type for maps)
    label: str = ""  # "", "repeated", "optional", "required"
    map_key: str | None = None
    oneof: str | None = None
    deprecated: bool = False
    comment: list[str] = field(default_factory=list)


@dataclass
class Oneof:
    name: str
    comment: list[str] = field(default_factory=list)
    fields: list[str] = field(default_factory=list)


@dataclass
class EnumValue:
    name: str
    number: str
    deprecated: bool = False
    comment: list[str] = field(default_factory=list)


@dataclass
class Enum:
    name: str
    full_name: str
    comment: list[str] = field(default_factory=list)
    values: list[EnumValue] = field(default_factory=list)
    reserved: list[str] = field(default_factory=list)


@dataclass
class Message:
    name: str
    full_name: str
    comment: list[str] = field(default_factory=list)
    fields: list[Field] = field(default_factory=list)
    oneofs: list[Oneof] = field(default_factory=list)
    messages: list["Message"] = field(default_factory=list)
    enums: list[Enum] = field(default_factory=list)
    reserved: list[str] = field(default_factory=list)


@dataclass
class Rpc:
    name: str
    request: str
    response: str
    client_streaming: bool
    server_streaming: bool
    comment: list[str] = field(default_factory=list)


@dataclass
class Service:
    name: str
    full_name: str
    comment: list[str] = field(default_factory=list)
    rpcs: list[Rpc] = field(default_factory=list)


@dataclass
class ProtoFile:
    path: str  # relative to the proto root, e.g. "palisade/v1/agent.proto"
    package: str = ""
    syntax: str = ""
    comment: list[str] = field(default_factory=list)
    imports: list[str] = field(default_factory=list)
    services: list[Service] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    enums: list[Enum] = field(default_factory=list)


# --------------------------------------------------------------------------------------
# Parser


class Parser:
    def __init__(self, path: str, text: str) -> None:
        self.path = path
        self.tokens, self.comments = tokenize(path, text)
        self.pos = 0
        self.used_comments: set[int] = set()

    # Token helpers

    def peek(self, offset: int = 0) -> Token | None:
        i = self.pos + offset
        return self.tokens[i] if i < len(self.tokens) else None

    def line(self) -> int:
        tok = self.peek()
        return tok.line if tok else (self.tokens[-1].line if self.tokens else 1)

    def error(self, message: str) -> ParseError:
        return ParseError(self.path, self.line(), message)

    def next(self) -> Token:
        tok = self.peek()
        if tok is None:
            raise self.error("unexpected end of file")
        self.pos += 1
        return tok

    def accept(self, text: str) -> bool:
        tok = self.peek()
        if tok is not None and tok.text == text and tok.kind in ("sym", "ident"):
            self.pos += 1
            return True
        return False

    def expect(self, text: str) -> Token:
        tok = self.next()
        if tok.text != text:
            raise ParseError(self.path, tok.line, f"expected {text!r}, found {tok.text!r}")
        return tok

    def ident(self) -> str:
        tok = self.next()
        if tok.kind != "ident":
            raise ParseError(self.path, tok.line, f"expected a name, found {tok.text!r}")
        return tok.text

    def integer(self) -> str:
        tok = self.next()
        if tok.kind != "int":
            raise ParseError(self.path, tok.line, f"expected a number, found {tok.text!r}")
        return tok.text

    # Comments

    def leading(self, line: int) -> list[str]:
        """The comment block that ends on the line directly above `line` (no blank line
        between, not the trailing comment of the code on that line)."""
        idx = len(self.comments) - 1
        while idx >= 0 and self.comments[idx].last_line >= line:
            idx -= 1
        block: list[Comment] = []
        expect_end = line - 1
        while idx >= 0:
            c = self.comments[idx]
            if c.last_line != expect_end or c.trailing_of is not None or idx in self.used_comments:
                break
            block.append(c)
            self.used_comments.add(idx)
            expect_end = c.first_line - 1
            idx -= 1
        lines: list[str] = []
        for c in reversed(block):
            lines.extend(c.text)
        return trim(lines)

    def trailing(self) -> list[str]:
        """The comment right after the token just consumed (a `;`, `{` or `}`), on its line."""
        last = self.pos - 1
        for i, c in enumerate(self.comments):
            if c.after_token == last and c.trailing_of is not None and i not in self.used_comments:
                self.used_comments.add(i)
                return trim(list(c.text))
        return []

    # Skipping what the reference does not show

    def skip_statement(self) -> None:
        """Skips to the `;` that ends a statement, over balanced brackets."""
        depth = 0
        while True:
            tok = self.next()
            if tok.text in ("{", "[", "(") and tok.kind == "sym":
                depth += 1
            elif tok.text in ("}", "]", ")") and tok.kind == "sym":
                depth -= 1
                if depth < 0:
                    raise ParseError(self.path, tok.line, f"unbalanced {tok.text!r}")
            elif tok.text == ";" and depth == 0:
                return

    def skip_block(self) -> None:
        """Skips a `{ ... }` block (the opening brace is next)."""
        self.expect("{")
        depth = 1
        while depth:
            tok = self.next()
            if tok.kind == "sym" and tok.text == "{":
                depth += 1
            elif tok.kind == "sym" and tok.text == "}":
                depth -= 1

    def field_options(self) -> bool:
        """Parses `[ ... ]` after a field or value; returns whether it says deprecated = true."""
        if not self.accept("["):
            return False
        deprecated = False
        depth = 1
        texts: list[str] = []
        while depth:
            tok = self.next()
            if tok.kind == "sym" and tok.text == "[":
                depth += 1
            elif tok.kind == "sym" and tok.text == "]":
                depth -= 1
            texts.append(tok.text)
        joined = " ".join(texts)
        if re.search(r"(^|[ ,])deprecated = true", joined):
            deprecated = True
        return deprecated

    def reserved(self) -> list[str]:
        items: list[str] = []
        current: list[str] = []
        while True:
            tok = self.next()
            if tok.text == ";" and tok.kind == "sym":
                break
            if tok.text == "," and tok.kind == "sym":
                items.append(" ".join(current))
                current = []
                continue
            current.append(tok.text)
        if current:
            items.append(" ".join(current))
        return items

    # Grammar

    def parse_file(self) -> ProtoFile:
        f = ProtoFile(self.path)
        while self.peek() is not None:
            tok = self.peek()
            assert tok is not None
            if tok.text == "syntax" or tok.text == "edition":
                f.comment = self.leading(tok.line)
                self.next()
                self.expect("=")
                f.syntax = self.next().text.strip("\"'")
                self.expect(";")
            elif tok.text == "package":
                self.next()
                f.package = self.ident()
                self.expect(";")
            elif tok.text == "import":
                self.next()
                if self.peek() is not None and self.peek().text in ("public", "weak"):  # type: ignore[union-attr]
                    self.next()
                f.imports.append(self.next().text.strip("\"'"))
                self.expect(";")
            elif tok.text == "option":
                self.skip_statement()
            elif tok.text == "message":
                f.messages.append(self.message(f.package))
            elif tok.text == "enum":
                f.enums.append(self.enum(f.package))
            elif tok.text == "service":
                f.services.append(self.service(f.package))
            elif tok.text == "extend":
                self.next()
                self.ident()
                self.skip_block()
            elif tok.text == ";":
                self.next()
            else:
                raise self.error(f"unexpected {tok.text!r} at top level")
        return f

    def message(self, scope: str) -> Message:
        start = self.expect("message")
        comment = self.leading(start.line)
        name = self.ident()
        full = f"{scope}.{name}" if scope else name
        self.expect("{")
        m = Message(name, full, comment + self.trailing())
        while not self.accept("}"):
            tok = self.peek()
            if tok is None:
                raise self.error(f"message {name} is not closed")
            if tok.text == "message":
                m.messages.append(self.message(full))
            elif tok.text == "enum":
                m.enums.append(self.enum(full))
            elif tok.text == "oneof":
                self.oneof(m)
            elif tok.text == "reserved":
                self.next()
                m.reserved.extend(self.reserved())
            elif tok.text in ("option", "extensions"):
                self.skip_statement()
            elif tok.text == "extend":
                self.next()
                self.ident()
                self.skip_block()
            elif tok.text == ";":
                self.next()
            else:
                m.fields.append(self.field())
        return m

    def oneof(self, m: Message) -> None:
        start = self.expect("oneof")
        comment = self.leading(start.line)
        name = self.ident()
        self.expect("{")
        o = Oneof(name, comment + self.trailing())
        while not self.accept("}"):
            tok = self.peek()
            if tok is None:
                raise self.error(f"oneof {name} is not closed")
            if tok.text == "option":
                self.skip_statement()
            elif tok.text == ";":
                self.next()
            else:
                f = self.field()
                f.oneof = name
                o.fields.append(f.name)
                m.fields.append(f)
        m.oneofs.append(o)

    def field(self) -> Field:
        first = self.peek()
        assert first is not None
        comment = self.leading(first.line)
        label = ""
        if first.text in ("repeated", "optional", "required") and first.kind == "ident":
            # `optional` may also be a message name in proto2; a label is followed by a type.
            nxt = self.peek(1)
            if nxt is not None and nxt.kind == "ident":
                label = first.text
                self.next()
        map_key = None
        if self.peek() is not None and self.peek().text == "map" and self.peek(1) is not None \
                and self.peek(1).text == "<":  # type: ignore[union-attr]
            self.next()
            self.expect("<")
            map_key = self.ident()
            self.expect(",")
            type_ = self.ident()
            self.expect(">")
        else:
            type_ = self.ident()
        if type_ == "group":
            raise self.error("proto2 groups are not supported")
        name = self.ident()
        self.expect("=")
        number = self.integer()
        deprecated = self.field_options()
        self.expect(";")
        return Field(name, number, type_, label, map_key, None, deprecated,
                     comment + self.trailing())

    def enum(self, scope: str) -> Enum:
        start = self.expect("enum")
        comment = self.leading(start.line)
        name = self.ident()
        self.expect("{")
        e = Enum(name, f"{scope}.{name}" if scope else name, comment + self.trailing())
        while not self.accept("}"):
            tok = self.peek()
            if tok is None:
                raise self.error(f"enum {name} is not closed")
            if tok.text == "option":
                self.skip_statement()
            elif tok.text == "reserved":
                self.next()
                e.reserved.extend(self.reserved())
            elif tok.text == ";":
                self.next()
            else:
                vcomment = self.leading(tok.line)
                vname = self.ident()
                self.expect("=")
                number = self.integer()
                deprecated = self.field_options()
                self.expect(";")
                e.values.append(EnumValue(vname, number, deprecated, vcomment + self.trailing()))
        return e

    def service(self, scope: str) -> Service:
        start = self.expect("service")
        comment = self.leading(start.line)
        name = self.ident()
        self.expect("{")
        s = Service(name, f"{scope}.{name}" if scope else name, comment + self.trailing())
        while not self.accept("}"):
            tok = self.peek()
            if tok is None:
                raise self.error(f"service {name} is not closed")
            if tok.text == "option":
                self.skip_statement()
            elif tok.text == ";":
                self.next()
            elif tok.text == "rpc":
                rcomment = self.leading(tok.line)
                self.next()
                rname = self.ident()
                self.expect("(")
                client_streaming = self.accept("stream")
                request = self.ident()
                self.expect(")")
                self.expect("returns")
                self.expect("(")
                server_streaming = self.accept("stream")
                response = self.ident()
                self.expect(")")
                if self.peek() is not None and self.peek().text == "{":  # type: ignore[union-attr]
                    self.skip_block()
                else:
                    self.expect(";")
                trailing = self.trailing()
                s.rpcs.append(Rpc(rname, request, response, client_streaming, server_streaming,
                                  rcomment + trailing))
            else:
                raise self.error(f"unexpected {tok.text!r} in service {name}")
        return s


def trim(lines: list[str]) -> list[str]:
    lines = [line.rstrip() for line in lines]
    while lines and not lines[0].strip():
        lines.pop(0)
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


# --------------------------------------------------------------------------------------
# Rendering

SCALARS = {
    "double", "float", "int32", "int64", "uint32", "uint64", "sint32", "sint64", "fixed32",
    "fixed64", "sfixed32", "sfixed64", "bool", "string", "bytes",
}


class Index:
    """Every message and enum of the files rendered, by full name, for links."""

    def __init__(self, files: list[ProtoFile]) -> None:
        self.names: set[str] = set()
        for f in files:
            for m in f.messages:
                self._add_message(m)
            for e in f.enums:
                self.names.add(e.full_name)

    def _add_message(self, m: Message) -> None:
        self.names.add(m.full_name)
        for n in m.messages:
            self._add_message(n)
        for e in m.enums:
            self.names.add(e.full_name)

    def resolve(self, type_: str, scope: str) -> str | None:
        """Protobuf name resolution: innermost scope outwards; a leading dot is absolute."""
        if type_.startswith("."):
            return type_[1:] if type_[1:] in self.names else None
        parts = scope.split(".") if scope else []
        while True:
            candidate = ".".join(parts + [type_])
            if candidate in self.names:
                return candidate
            if not parts:
                return None
            parts.pop()


def anchor(full_name: str) -> str:
    return full_name.replace(".", "-").lower()


TAG_RE = re.compile(r"<(?=[A-Za-z/!?])")


def inline(text: str) -> str:
    """Comment text safe inside Markdown: no accidental HTML tags."""
    return TAG_RE.sub("&lt;", text)


def paragraphs(lines: list[str]) -> str:
    """A comment as Markdown paragraphs (blank comment lines separate them)."""
    return "\n".join(inline(line) for line in lines)


def cell(lines: list[str]) -> str:
    """A comment as one table cell: paragraphs joined with <br>, pipes escaped."""
    paras: list[list[str]] = [[]]
    for line in lines:
        if line.strip():
            paras[-1].append(line.strip())
        elif paras[-1]:
            paras.append([])
    text = "<br><br>".join(" ".join(p) for p in paras if p)
    return inline(text).replace("|", "\\|")


class Renderer:
    def __init__(self, files: list[ProtoFile]) -> None:
        self.files = files
        self.index = Index(files)
        self.out: list[str] = []

    def type_ref(self, type_: str, scope: str) -> str:
        if type_ in SCALARS:
            return f"`{type_}`"
        full = self.index.resolve(type_, scope)
        if full is None:
            return f"`{type_.lstrip('.')}`"
        return f"[`{type_.lstrip('.')}`](#{anchor(full)})"

    def field_type(self, f: Field, scope: str) -> str:
        value = self.type_ref(f.type, scope)
        if f.map_key is not None:
            text = f"map&lt;`{f.map_key}`, {value}&gt;"
        elif f.label:
            text = f"{f.label} {value}"
        else:
            text = value
        if f.oneof is not None:
            text += f" (oneof `{f.oneof}`)"
        return text

    def emit(self, *lines: str) -> None:
        self.out.extend(lines)

    def render(self, sources: str) -> str:
        self.emit(
            "<!-- Generated by scripts/gen-api-doc.py from the comments in "
            f"{sources}. Do not edit: change the .proto files and run the script. -->",
            "",
            "# API reference",
            "",
            "Every service, message and enum of the Palisade gRPC API, with the documentation",
            "written in the `.proto` files (which are the source of truth; this page is generated",
            "from them, and CI fails when it is out of date). Types link to their definitions;",
            "`google.protobuf.*` types are protobuf's well-known types.",
            "",
            "| file | package | services | messages | enums |",
            "|---|---|---|---|---|",
        )
        for f in self.files:
            n_messages = sum(1 for _ in walk_messages(f.messages))
            n_enums = len(f.enums) + sum(len(m.enums) for m in walk_messages(f.messages))
            services = ", ".join(f"[`{s.name}`](#{anchor(s.full_name)})" for s in f.services) or "—"
            self.emit(
                f"| [`{f.path}`](#{file_anchor(f)}) | `{f.package}` | {services} | {n_messages} | {n_enums} |"
            )
        for f in self.files:
            self.file(f)
        lines: list[str] = []
        for line in self.out:
            if line == "" and (not lines or lines[-1] == ""):
                continue  # one blank line between blocks, none at the ends
            lines.append(line)
        while lines and lines[-1] == "":
            lines.pop()
        return "\n".join(lines) + "\n"

    def file(self, f: ProtoFile) -> None:
        self.emit("", f'<a id="{file_anchor(f)}"></a>', "", f"## `{f.path}`", "")
        if f.comment:
            self.emit(paragraphs(f.comment), "")
        facts = [f"Package `{f.package}`."] if f.package else []
        if f.imports:
            facts.append("Imports " + ", ".join(f"`{i}`" for i in f.imports) + ".")
        if facts:
            self.emit(" ".join(facts), "")
        for s in f.services:
            self.service(s, f.package)
        for m in f.messages:
            self.message(m, f.package)
        for e in f.enums:
            self.enum(e)

    def service(self, s: Service, scope: str) -> None:
        self.emit(f'<a id="{anchor(s.full_name)}"></a>', "", f"### service `{s.name}`", "")
        if s.comment:
            self.emit(paragraphs(s.comment), "")
        if s.rpcs:
            self.emit("| RPC | request | response | kind |", "|---|---|---|---|")
            for r in s.rpcs:
                self.emit(
                    f"| [`{r.name}`](#{anchor(s.full_name + '.' + r.name)}) | "
                    f"{stream(r.client_streaming)}{self.type_ref(r.request, scope)} | "
                    f"{stream(r.server_streaming)}{self.type_ref(r.response, scope)} | {rpc_kind(r)} |"
                )
            self.emit("")
        for r in s.rpcs:
            self.emit(
                f'<a id="{anchor(s.full_name + "." + r.name)}"></a>',
                "",
                f"#### `{s.name}.{r.name}`",
                "",
                f"`rpc {r.name}({'stream ' if r.client_streaming else ''}{r.request}) returns "
                f"({'stream ' if r.server_streaming else ''}{r.response})` — {rpc_kind(r)}.",
                "",
            )
            if r.comment:
                self.emit(paragraphs(r.comment), "")

    def message(self, m: Message, scope: str) -> None:
        # Types named inside a message resolve in its own scope first.
        own_scope = m.full_name
        shown = m.full_name[len(scope_package(self, m)) + 1:] if scope_package(self, m) else m.full_name
        self.emit(f'<a id="{anchor(m.full_name)}"></a>', "", f"### message `{shown}`", "")
        if m.comment:
            self.emit(paragraphs(m.comment), "")
        if m.fields:
            self.emit("| field | number | type | description |", "|---|---:|---|---|")
            for f in m.fields:
                desc = cell(f.comment)
                if f.deprecated:
                    desc = ("**Deprecated.** " + desc).strip()
                self.emit(f"| `{f.name}` | {f.number} | {self.field_type(f, own_scope)} | {desc} |")
            self.emit("")
        else:
            self.emit("No fields.", "")
        for o in m.oneofs:
            members = ", ".join(f"`{name}`" for name in o.fields)
            what = cell(o.comment) if o.comment else "at most one of them is set."
            self.emit(f"**oneof `{o.name}`** ({members}): {what}", "")
        if m.reserved:
            self.emit("Reserved: " + ", ".join(f"`{r}`" for r in m.reserved) + ".", "")
        for n in m.messages:
            self.message(n, scope)
        for e in m.enums:
            self.enum(e)

    def enum(self, e: Enum) -> None:
        package = self.package_of(e.full_name)
        shown = e.full_name[len(package) + 1:] if package else e.full_name
        self.emit(f'<a id="{anchor(e.full_name)}"></a>', "", f"### enum `{shown}`", "")
        if e.comment:
            self.emit(paragraphs(e.comment), "")
        self.emit("| value | number | description |", "|---|---:|---|")
        for v in e.values:
            desc = cell(v.comment)
            if v.deprecated:
                desc = ("**Deprecated.** " + desc).strip()
            self.emit(f"| `{v.name}` | {v.number} | {desc} |")
        self.emit("")
        if e.reserved:
            self.emit("Reserved: " + ", ".join(f"`{r}`" for r in e.reserved) + ".", "")

    def package_of(self, full_name: str) -> str:
        best = ""
        for f in self.files:
            if f.package and full_name.startswith(f.package + ".") and len(f.package) > len(best):
                best = f.package
        return best


def scope_package(renderer: Renderer, m: Message) -> str:
    return renderer.package_of(m.full_name)


def stream(flag: bool) -> str:
    return "stream " if flag else ""


def rpc_kind(r: Rpc) -> str:
    if r.client_streaming and r.server_streaming:
        return "bidirectional streaming"
    if r.client_streaming:
        return "client streaming"
    if r.server_streaming:
        return "server streaming"
    return "unary"


def file_anchor(f: ProtoFile) -> str:
    return "file-" + re.sub(r"[^a-z0-9]+", "-", f.path.lower()).strip("-")


def walk_messages(messages: list[Message]):
    for m in messages:
        yield m
        yield from walk_messages(m.messages)


# --------------------------------------------------------------------------------------
# Lint: what STYLE.md asks to be documented


def undocumented(files: list[ProtoFile]) -> list[str]:
    missing: list[str] = []
    for f in files:
        if not f.comment:
            missing.append(f"{f.path}: the file has no comment above `syntax`")
        for s in f.services:
            if not s.comment:
                missing.append(f"{f.path}: service {s.full_name}")
            missing.extend(f"{f.path}: rpc {s.full_name}.{r.name}" for r in s.rpcs if not r.comment)
        for m in walk_messages(f.messages):
            if not m.comment:
                missing.append(f"{f.path}: message {m.full_name}")
            missing.extend(f"{f.path}: field {m.full_name}.{x.name}" for x in m.fields if not x.comment)
            for e in m.enums:
                missing.extend(enum_missing(f, e))
        for e in f.enums:
            missing.extend(enum_missing(f, e))
    return missing


def enum_missing(f: ProtoFile, e: Enum) -> list[str]:
    out = [f"{f.path}: enum {e.full_name}"] if not e.comment else []
    out.extend(f"{f.path}: enum value {e.full_name}.{v.name}" for v in e.values if not v.comment)
    return out


# --------------------------------------------------------------------------------------


def load(proto_dir: pathlib.Path, proto_root: pathlib.Path) -> list[ProtoFile]:
    files = []
    for path in sorted(proto_dir.glob("*.proto")):
        rel = path.relative_to(proto_root).as_posix()
        files.append(Parser(rel, path.read_text(encoding="utf-8")).parse_file())
    return files


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true",
                    help="do not write; exit 1 with a unified diff if the output file differs")
    ap.add_argument("--lint", action="store_true",
                    help="exit 1 if a file, service, rpc, message, field, enum or value has no comment")
    ap.add_argument("--proto-dir", type=pathlib.Path, default=DEFAULT_PROTO_DIR,
                    help="directory whose *.proto files are rendered (default: proto/palisade/v1)")
    ap.add_argument("--output", type=pathlib.Path, default=DEFAULT_OUTPUT,
                    help="Markdown file to write or check (default: docs/api.md)")
    args = ap.parse_args(argv)

    proto_dir = args.proto_dir.resolve()
    # Files are named as they are imported: relative to the directory that holds `palisade/`.
    proto_root = proto_dir.parent.parent if proto_dir.parent.name == "palisade" else proto_dir
    try:
        files = load(proto_dir, proto_root)
    except ParseError as e:
        print(f"gen-api-doc: {e}", file=sys.stderr)
        return 2
    if not files:
        print(f"gen-api-doc: no .proto files in {proto_dir}", file=sys.stderr)
        return 2
    try:
        sources = proto_dir.relative_to(ROOT).as_posix() + "/*.proto"
    except ValueError:
        sources = "*.proto"
    text = Renderer(files).render(sources)

    status = 0
    if args.lint:
        missing = undocumented(files)
        for item in missing:
            print(f"gen-api-doc: undocumented: {item}", file=sys.stderr)
        if missing:
            status = 1

    output = args.output
    if args.check:
        current = output.read_text(encoding="utf-8") if output.exists() else ""
        if current != text:
            try:
                shown = output.resolve().relative_to(ROOT).as_posix()
            except ValueError:
                shown = str(output)
            diff = difflib.unified_diff(
                current.splitlines(keepends=True), text.splitlines(keepends=True),
                fromfile=f"{shown} (on disk)", tofile=f"{shown} (generated)",
            )
            sys.stdout.writelines(diff)
            print(f"gen-api-doc: {shown} is out of date; run scripts/gen-api-doc.py", file=sys.stderr)
            return 1
        return status
    output.parent.mkdir(parents=True, exist_ok=True)
    if not output.exists() or output.read_text(encoding="utf-8") != text:
        output.write_text(text, encoding="utf-8")
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
