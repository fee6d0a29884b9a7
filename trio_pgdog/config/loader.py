"""Read pgdog.toml and users.toml into a ``Config``.

The sections a file may hold are read off ``Config``'s fields (see
``models.Section``), so the loader has no list of its own to keep up to date.
Everything that goes wrong ends as one ``ConfigError``: the first problem in
file order, located by ``SourceMap``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from typing import Any, Literal, get_origin

import attrs
import tomlkit
from tomlkit.exceptions import KeyAlreadyPresent, ParseError, TOMLKitError

from .checks import check_config
from .converter import Path, Problem, make_converter, problems_from
from .errors import ConfigError
from .models import SECTION, Config, Section
from .source_map import SourceMap

FileKind = Literal["pgdog", "users"]

_CONVERTER = make_converter()
# tomlkit appends the position to its message; we print the line ourselves.
_POSITION = re.compile(r"\s+at line (\d+) col (\d+)$")


@attrs.frozen
class _SectionField:
    """A ``Config`` field that is filled from a top-level TOML section."""

    field: str
    type: Any
    # The TOML names it is read from: its own, then any aliases.
    names: tuple[str, ...]

    @property
    def is_array(self) -> bool:
        return get_origin(self.type) is tuple

    def header(self, name: str) -> str:
        return f"[[{name}]]" if self.is_array else f"[{name}]"


def _section_fields(kind: FileKind) -> tuple[_SectionField, ...]:
    found = []
    for field in attrs.fields(attrs.resolve_types(Config)):
        section: Section | None = field.metadata.get(SECTION)
        if section is not None and section.file == kind:
            found.append(_SectionField(field.name, field.type, (field.name, *section.aliases)))
    return tuple(found)


_SECTIONS: dict[FileKind, tuple[_SectionField, ...]] = {
    "pgdog": _section_fields("pgdog"),
    "users": _section_fields("users"),
}


# --- naming places in a file ------------------------------------------------


def _table_label(path: Path) -> str:
    """``("databases", 0)`` -> ``[[databases]] #1``; ``("general",)`` -> ``[general]``."""
    last = max((i for i, part in enumerate(path) if isinstance(part, int)), default=None)
    if last is None:
        return "[" + ".".join(map(str, path)) + "]"
    names = ".".join(str(p) for p in path[:last] if isinstance(p, str))
    label = f"[[{names}]] #{int(path[last]) + 1}"
    rest = ".".join(str(p) for p in path[last + 1 :])
    return f"{label} [{rest}]" if rest else label


@attrs.define
class _Source:
    """One file being loaded: its name, its line index, and where entries came from."""

    label: str
    lines: SourceMap
    # Config field -> for each entry, the TOML array it was read from and its index there.
    origins: dict[str, list[tuple[str, int]]] = attrs.Factory(dict)

    def error(self, problem: Problem) -> ConfigError:
        return ConfigError(
            self.label, self._describe(problem), line=self.lines.nearest_line(problem.path)
        )

    def _describe(self, problem: Problem) -> str:
        *table, key = problem.path
        where = _table_label(tuple(table)) if table else ""
        if problem.kind == "unknown":
            return f"{where} unknown key {key!r}".lstrip()
        if problem.kind == "missing":
            return f"{where}: missing required key {key!r}" if where else f"missing key {key!r}"
        if isinstance(key, int):
            # An array element: of an inline array (``tags = [...]``) or an array of tables.
            if self.lines.is_assigned(tuple(table)):
                *outer, name = table
                owner = f"{_table_label(tuple(outer))} " if outer else ""
                return f"{owner}{name!r} item #{key + 1}: {problem.message}"
            return f"{_table_label(problem.path)}: {problem.message}"
        return f"{where} {key!r}: {problem.message}".lstrip()

    def entry_path(self, field: str, index: int) -> Path:
        return self.origins[field][index]

    def entry_label(self, field: str, index: int) -> str:
        return _table_label(self.entry_path(field, index))


def _first(errors: Iterable[ConfigError]) -> ConfigError | None:
    # Report the problem nearest the top of the file; unlocated ones last.
    ordered = sorted(errors, key=lambda e: (e.line is None, e.line or 0))
    return ordered[0] if ordered else None


# --- loading one file -------------------------------------------------------


def _parse(label: str, text: str) -> dict[str, Any]:
    try:
        document = tomlkit.parse(text)
    except ParseError as exc:
        match = _POSITION.search(str(exc))
        message = str(exc)[: match.start()] if match else str(exc)
        raise ConfigError(
            label, f"invalid TOML: {message} (column {exc.col})", line=exc.line
        ) from None
    except KeyAlreadyPresent as exc:
        # Raised for a key repeated inside a table, without a position: find it.
        line = SourceMap(text).first_redefinition
        raise ConfigError(label, f"invalid TOML: {exc}", line=line) from None
    except TOMLKitError as exc:
        raise ConfigError(label, f"invalid TOML: {exc}") from None
    return document.unwrap()


def _unknown_section(source: _Source, key: str, value: Any, kind: FileKind) -> ConfigError:
    expected = ", ".join(f.header(n) for f in _SECTIONS[kind] for n in f.names)
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        what = f"unknown table [[{key}]]"
    elif isinstance(value, dict):
        what = f"unknown table [{key}]"
    else:
        what = f"unknown key {key!r}"
    return ConfigError(
        source.label, f"{what} (expected {expected})", line=source.lines.line_of((key,))
    )


def _load_file(label: str, text: str, kind: FileKind) -> tuple[dict[str, Any], _Source]:
    """Parse and structure one file into keyword arguments for ``Config``."""
    data = _parse(label, text)
    source = _Source(label, SourceMap(text))
    sections = _SECTIONS[kind]
    accepted = {name for section in sections for name in section.names}
    errors = [
        _unknown_section(source, key, value, kind)
        for key, value in data.items()
        if key not in accepted
    ]
    problems: list[Problem] = []
    values: dict[str, Any] = {}
    for section in sections:
        present = [name for name in section.names if name in data]
        if not present:
            continue  # the Config field's default applies
        if not section.is_array:
            try:
                values[section.field] = _CONVERTER.structure(data[present[0]], section.type)
            except Exception as exc:
                problems.extend(problems_from(exc, (present[0],)))
            continue
        # Arrays of tables under several names ([[databases]], [[servers]]) are appended.
        entries: list[Any] = []
        origins: list[tuple[str, int]] = []
        for name in present:
            try:
                part = _CONVERTER.structure(data[name], section.type)
            except Exception as exc:
                problems.extend(problems_from(exc, (name,)))
                continue
            entries.extend(part)
            origins.extend((name, i) for i in range(len(part)))
        values[section.field] = tuple(entries)
        source.origins[section.field] = origins
    first = _first([*errors, *(source.error(p) for p in problems)])
    if first is not None:
        raise first
    return values, source


# --- public API -------------------------------------------------------------


def _build(
    pgdog_text: str,
    users_text: str | None,
    pgdog_label: str,
    users_label: str,
    pgdog_path: str | None,
    users_path: str | None,
) -> Config:
    values, pgdog_source = _load_file(pgdog_label, pgdog_text, "pgdog")
    sources = {section.field: pgdog_source for section in _SECTIONS["pgdog"]}
    if users_text is not None:
        user_values, users_source = _load_file(users_label, users_text, "users")
        values.update(user_values)
        sources.update({section.field: users_source for section in _SECTIONS["users"]})
    config = Config(**values, hook_order=_hook_order(pgdog_text), pgdog_path=pgdog_path,
                    users_path=users_path)

    def label(field: str, index: int) -> str:
        return sources[field].entry_label(field, index)

    errors = []
    for issue in check_config(config, label, pgdog_label):
        source = sources[issue.field]
        entry = (issue.field,) if issue.index is None else source.entry_path(issue.field, issue.index)
        path = (*entry, issue.key)
        errors.append(source.error(Problem(path, "value", issue.message)))
    # pgdog.toml problems first: users.toml refers to it, not the other way round.
    first = _first(e for e in errors if e.file == pgdog_label) or _first(errors)
    if first is not None:
        raise first
    return config


_HOOK_HEADER = re.compile(r"^\s*\[\[?\s*(hooks\s*\.\s*\w+|plugins)\s*[\].]", re.MULTILINE)


def _hook_order(pgdog_text: str) -> tuple[str, ...]:
    """Where each [hooks.*] section and the [[plugins]] array first appear in pgdog.toml
    (tomlkit groups a super-table's children, so the headers are read off the text)."""
    order: list[str] = []
    for match in _HOOK_HEADER.finditer(pgdog_text):
        name = re.sub(r"\s", "", match.group(1))
        if name not in order:
            order.append(name)
    return tuple(order)


def load_config_text(
    pgdog_text: str,
    users_text: str | None,
    *,
    pgdog_name: str = "pgdog.toml",
    users_name: str = "users.toml",
) -> Config:
    """Load a configuration from strings; ``users_text=None`` means no users.

    The names only appear in error messages.
    """
    return _build(pgdog_text, users_text, pgdog_name, users_name, None, None)


_NO_USERS_FILE = ("the proxy needs it to let anyone log in (create it with [[users]] entries, "
                  "or pass its path with --users)")


def _read(path: str, *, missing: str = "") -> str:
    """The text of `path`; `missing` is added to the error when the file does not exist."""
    try:
        with open(path, encoding="utf-8") as file:
            return file.read()
    except FileNotFoundError as exc:
        hint = f"; {missing}" if missing else ""
        raise ConfigError(path, f"cannot read: {exc.strerror}{hint}") from None
    except OSError as exc:
        raise ConfigError(path, f"cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        bad = exc.object[exc.start]
        raise ConfigError(
            path, f"cannot read: not UTF-8 text (byte 0x{bad:02x} at offset {exc.start})"
        ) from None


def load_config(
    pgdog_path: str | os.PathLike[str],
    users_path: str | os.PathLike[str] | None,
) -> Config:
    """Load pgdog.toml and users.toml from disk.

    Both files must exist: without users.toml nobody could log in, which is a
    mistake rather than a configuration (an empty users.toml is allowed; the
    caller decides whether to warn). ``users_path=None`` gives a config without
    users. Error messages name the files by the paths given here.
    """
    pgdog_label = os.fspath(pgdog_path)
    pgdog_text = _read(pgdog_label)
    users_label = os.fspath(users_path) if users_path is not None else None
    users_text = None
    if users_label is not None:
        users_text = _read(users_label, missing=_NO_USERS_FILE)
    return _build(
        pgdog_text,
        users_text,
        pgdog_label,
        users_label or "users.toml",
        pgdog_label,
        users_label,
    )
