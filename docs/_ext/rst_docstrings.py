"""Griffe extension for the API site: reads optzoo's reST idioms as Markdown.

The docstrings are Google style (``Args:``/``Returns:``/``Raises:``) with a few reStructuredText
constructs that read well in a terminal: ``:func:`name``` roles, ``.. math::`` blocks, simple
``====`` tables, ``Example:`` headings and ``text::`` literal blocks. mkdocstrings renders
Markdown, so before a docstring is parsed this extension rewrites, line by line:

* a role ``:func:`~a.b.c``` to the code span ```c``` (without ``~``: ```a.b.c```);
* a ``.. math::`` block and a simple table to a fenced text block (kept as written);
* ``Example:``/``Example::`` to griffe's ``Examples:`` section, so ``>>>`` lines are code;
* ``text::`` before an indented block to ``text:`` and a fenced block;
* a blank line before a bullet list that follows a paragraph line directly.

Only the rendered site changes; the source docstrings stay as they are.
"""

from __future__ import annotations

import re

import griffe

_ROLE = re.compile(r":(?:py:)?(?:func|class|mod|meth|data|attr|obj|exc|const|term):`(~?)([^`]+)`")
_TABLE_BORDER = re.compile(r"^\s*=+(?: +=+)+\s*$")
_EXAMPLE = re.compile(r"^(\s*)Example::?\s*$")
_LITERAL = re.compile(r"^(\s*)(.*\S)::\s*$")
_MATH = re.compile(r"^(\s*)\.\. math::\s*$")
_BULLET = re.compile(r"^\s*[*-] ")


def _role(match: re.Match[str]) -> str:
    target = match.group(2)
    if match.group(1):
        target = target.rsplit(".", 1)[-1]
    return f"`{target}`"


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _block_end(lines: list[str], start: int, indent: int) -> int:
    """Index after the indented block that starts at ``start`` (blank lines inside are kept)."""
    end = start
    i = start
    while i < len(lines):
        if lines[i].strip():
            if _indent(lines[i]) <= indent:
                break
            end = i + 1
        i += 1
    return end


def _fence(body: list[str], indent: str) -> list[str]:
    inner = min((_indent(line) for line in body if line.strip()), default=0)
    text = [indent + line[inner:] if line.strip() else "" for line in body]
    return [indent + "```text", *text, indent + "```"]


def _starts_list(out: list[str], indent: int) -> bool:
    """Whether a bullet at ``indent`` after the lines ``out`` begins a new list right below a
    paragraph (Markdown needs a blank line there; reST and terminals do not)."""
    if not out or not out[-1].strip():
        return False
    prev = out[-1]
    return not _BULLET.match(prev) and _indent(prev) <= indent


def to_markdown(text: str) -> str:
    """The Markdown reading of one docstring."""
    lines = [_ROLE.sub(_role, line) for line in text.splitlines()]
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        example = _EXAMPLE.match(line)
        math = _MATH.match(line)
        literal = _LITERAL.match(line)
        if example:
            out.append(f"{example.group(1)}Examples:")
            i += 1
        elif math or (literal and not line.lstrip().startswith(">>>")):
            head = math or literal
            indent = len(head.group(1))
            end = _block_end(lines, i + 1, indent)
            if literal and not math:
                out.append(f"{head.group(1)}{head.group(2)}:")
            body = lines[i + 1 : end]
            if any(b.strip() for b in body):
                out.extend(["", *_fence(body, head.group(1)), ""])
            i = end
        elif _TABLE_BORDER.match(line):
            borders, end = 0, i
            while end < len(lines) and borders < 3:
                borders += bool(_TABLE_BORDER.match(lines[end]))
                end += 1
            out.extend(["", *_fence(lines[i:end], " " * _indent(line)), ""])
            i = end
        else:
            if _BULLET.match(line) and _starts_list(out, _indent(line)):
                out.append("")
            out.append(line)
            i += 1
    return "\n".join(out)


class RstDocstrings(griffe.Extension):
    """Rewrites every docstring with :func:`to_markdown` once the package is loaded."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: object) -> None:
        self._rewrite(pkg, set())

    def _rewrite(self, obj: griffe.Object, seen: set[str]) -> None:
        if obj.path in seen:
            return
        seen.add(obj.path)
        if obj.docstring is not None:
            obj.docstring.value = to_markdown(obj.docstring.value)
        for member in obj.members.values():
            if not member.is_alias:
                self._rewrite(member, seen)
