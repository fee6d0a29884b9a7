"""Find the line a TOML table or key is on, for error messages.

tomlkit keeps no positions once a document is parsed, so this scans the text
again: table headers (``[a.b]``, ``[[a]]``, counting array entries) and
``key =`` lines. It understands the TOML that people write in config files
(comments, quoted and dotted keys, multi-line strings and arrays); for anything
stranger it finds nothing, and the error is reported without a line.
"""

from __future__ import annotations

import re

Path = tuple[str | int, ...]

_KEY_PART = r"""[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*"|'[^']*'"""
_DOTTED_KEY = rf"(?:{_KEY_PART})(?:\s*\.\s*(?:{_KEY_PART}))*"
_HEADER = re.compile(rf"^\s*(\[\[?)\s*({_DOTTED_KEY})\s*(\]\]?)\s*(?:#.*)?$")
_ASSIGNMENT = re.compile(rf"^\s*({_DOTTED_KEY})\s*=(.*)$")
_PART = re.compile(_KEY_PART)
_STRING = re.compile(r""""(?:[^"\\]|\\.)*"|'[^']*'""")


def _split_key(dotted: str) -> tuple[str, ...]:
    # Good enough unquoting: config keys do not use escape sequences.
    return tuple(part.strip("\"'") for part in _PART.findall(dotted))


def _bracket_depth(value: str) -> int:
    # How many arrays a value leaves open, ignoring brackets inside strings/comments.
    code = _STRING.sub('""', value).split("#", 1)[0]
    return code.count("[") + code.count("{") - code.count("]") - code.count("}")


class SourceMap:
    def __init__(self, text: str) -> None:
        self._lines: dict[Path, int] = {}
        # Entries seen so far per array of tables, keyed by its resolved path.
        self._array_counts: dict[Path, int] = {}
        # The first line that defines a key or table a second time, if any.
        self.first_redefinition: int | None = None
        self._defined: set[Path] = set()  # exact paths, unlike the prefixes in _lines
        self._assigned: set[Path] = set()  # paths written as ``key = value``
        self._scan(text)

    def line_of(self, path: Path) -> int | None:
        """The line of this exact table or key, if it was found."""
        return self._lines.get(path)

    def is_assigned(self, path: Path) -> bool:
        """Whether ``path`` was written as ``key = value`` (an index in it is an inline array)."""
        return path in self._assigned

    def nearest_line(self, path: Path) -> int | None:
        """The line of ``path``, or else of the closest enclosing table that has one."""
        while path:
            line = self._lines.get(path)
            if line is not None:
                return line
            path = path[:-1]
        return None

    def _record(self, path: Path, line: int) -> None:
        if path in self._defined and self.first_redefinition is None:
            self.first_redefinition = line
        self._defined.add(path)
        # Record every prefix as well, so ``[hooks.x]`` also locates ``hooks``.
        for end in range(1, len(path) + 1):
            self._lines.setdefault(path[:end], line)

    def _resolve(self, names: tuple[str, ...], is_array: bool) -> Path:
        path: list[str | int] = []
        for i, name in enumerate(names):
            path.append(name)
            here = tuple(path)
            if is_array and i == len(names) - 1:
                count = self._array_counts.get(here, 0)
                self._array_counts[here] = count + 1
                path.append(count)
            elif here in self._array_counts:
                # [a.b] after [[a]] belongs to the latest [[a]] entry.
                path.append(self._array_counts[here] - 1)
        return tuple(path)

    def _scan(self, text: str) -> None:
        table: Path = ()
        open_string: str | None = None  # the delimiter of a multi-line string we are in
        depth = 0  # arrays/inline tables left open by a multi-line value
        for number, line in enumerate(text.splitlines(), start=1):
            if open_string is not None:
                if line.count(open_string) % 2 == 1:
                    open_string = None
                continue
            if depth > 0:
                depth = max(0, depth + _bracket_depth(line))
                continue
            header = _HEADER.match(line)
            if header and (header.group(1) == "[[") == (header.group(3) == "]]"):
                table = self._resolve(_split_key(header.group(2)), header.group(1) == "[[")
                self._record(table, number)
                continue
            assignment = _ASSIGNMENT.match(line)
            if assignment is None:
                continue
            path = (*table, *_split_key(assignment.group(1)))
            self._record(path, number)
            self._assigned.add(path)
            value = assignment.group(2)
            for quotes in ('"""', "'''"):
                if value.count(quotes) % 2 == 1:
                    open_string = quotes
                    break
            else:
                depth = max(0, _bracket_depth(value))
