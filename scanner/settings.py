"""Options people repeat, from a file: ``hfscan.toml`` in the current folder, else the ``[tool.hfscan]`` table
of its ``pyproject.toml`` (or the file named by ``--config`` / ``HFSCAN_CONFIG``).

Top-level keys set that option for every command that has it; a table named after a command sets it for that
command only. Keys are the long option names (``fail-on``, ``search-budget``; ``peer`` takes a list). A value
given on the command line always wins. An unknown key is a usage error, not silently ignored.

Example (``hfscan.toml``)::

    search-budget = "small"
    fail-on = "backdoor"

    [check]
    peer = ["org/sst2-a", "org/sst2-b", "org/sst2-c"]
    format = "json,md,sarif"

    >>> defaults_for(main_group, {"fail-on": "backdoor", "check": {"max-peers": 4}})["check"]
    {'fail_on': 'backdoor', 'max_peers': 4}
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import click

from .errors import HfscanError


def load(path: str | None) -> tuple[dict, Path | None]:
    """The settings table and the file it came from (``{}, None`` when there is none)."""
    if path:
        file = Path(path)
        if not file.is_file():
            raise click.UsageError(f"config file {path} not found")
        return _read(file, file.name == "pyproject.toml"), file
    for file, table in ((Path("hfscan.toml"), False), (Path("pyproject.toml"), True)):
        if file.is_file():
            found = _read(file, table)
            if found or not table:
                return found, file
    return {}, None


def _read(file: Path, tool_table: bool) -> dict:
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise HfscanError(f"{file}: not a readable TOML file ({e})") from None
    return data.get("tool", {}).get("hfscan", {}) if tool_table else data


def defaults_for(group: click.Group, table: dict, source: str = "the config file") -> dict[str, dict]:
    """click's ``default_map`` for ``group``'s commands from a settings table (see the module docstring)."""
    commands = {name: cmd for name, cmd in group.commands.items()}
    out: dict[str, dict] = {name: {} for name in commands}
    for key, value in table.items():
        if isinstance(value, dict):
            if key not in commands:
                raise click.UsageError(f"{source}: [{key}] is not an hfscan command")
            for k, v in value.items():
                out[key][_param(commands[key], k, source, key)] = v
            continue
        hits = [name for name, cmd in commands.items() if _find(cmd, key)]
        if not hits:
            raise click.UsageError(f"{source}: {key!r} is not an option of any hfscan command")
        for name in hits:
            out[name].setdefault(_find(commands[name], key), value)
    return {k: v for k, v in out.items() if v}


def _find(cmd: click.Command, key: str) -> str | None:
    flag = "--" + key.replace("_", "-")
    for p in cmd.params:
        if isinstance(p, click.Option) and (flag in p.opts or key.replace("-", "_") == p.name):
            return p.name
    return None


def _param(cmd: click.Command, key: str, source: str, command: str) -> str:
    name = _find(cmd, key)
    if name is None:
        raise click.UsageError(f"{source}: {key!r} is not an option of hfscan {command}")
    return name
