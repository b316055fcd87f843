"""Parse the Containerfile subset that `lightabaco images build` supports.

Supported: FROM, ARG, ENV, LABEL, COPY, ADD (local files and tar archives), WORKDIR, USER, RUN,
ENTRYPOINT, CMD, plus EXPOSE/VOLUME/STOPSIGNAL/HEALTHCHECK/MAINTAINER/SHELL-free files accepted and
ignored where they do not change what runs. Anything else is refused with the line number, because
silently building something different from what the file says is worse than failing.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from lightabaco.sandbox.errors import ImageError


class BuildError(ImageError):
    """A build context or Containerfile cannot be built (the message names the file, line and fix)."""


SUPPORTED = {"FROM", "ARG", "ENV", "LABEL", "COPY", "ADD", "WORKDIR", "USER", "RUN", "ENTRYPOINT", "CMD"}
# Instructions with no effect on how lightabaco runs an image: accepted so common files build.
IGNORED = {"EXPOSE", "VOLUME", "STOPSIGNAL", "MAINTAINER", "HEALTHCHECK"}
_VAR = re.compile(r"\$(?:\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}"
                  r"|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))")


@dataclass
class Instruction:
    keyword: str
    args: str  # the raw argument text (continuations joined)
    line: int
    flags: dict[str, str] = field(default_factory=dict)  # --chown=..., --chmod=..., --from=...
    json_form: list[str] | None = None  # exec form ["a", "b"] when given


def find_containerfile(context: Path, name: str | None = None) -> Path:
    """The build file in `context`: `name` if given, else Containerfile, else Dockerfile."""
    candidates = [context / name] if name else [context / "Containerfile", context / "Dockerfile"]
    for path in candidates:
        if path.is_file():
            return path
    raise BuildError(f"no Containerfile or Dockerfile in {context}: create one, or pass --file NAME")


def _logical_lines(text: str) -> list[tuple[int, str]]:
    lines: list[tuple[int, str]] = []
    buf, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):
            continue  # comment lines inside a continuation are dropped, as Docker does
        if not buf:
            start = number
        if raw.rstrip().endswith("\\"):
            buf += raw.rstrip()[:-1] + " "
            continue
        buf += raw
        lines.append((start, buf.strip()))
        buf = ""
    if buf:
        lines.append((start, buf.strip()))
    return lines


def parse(text: str, source: str = "Containerfile") -> list[Instruction]:
    """Instructions in file order; raises BuildError on anything unsupported or malformed."""
    out: list[Instruction] = []
    for line, logical in _logical_lines(text):
        keyword, _, rest = logical.partition(" ")
        keyword = keyword.upper()
        rest = rest.strip()
        if keyword in IGNORED:
            continue
        if keyword not in SUPPORTED:
            raise BuildError(f"{source}:{line}: {keyword} is not supported by lightabaco's builder; "
                             f"supported are {', '.join(sorted(SUPPORTED))} (use podman with --engine podman)")
        flags: dict[str, str] = {}
        while rest.startswith("--"):
            flag, _, rest = rest.partition(" ")
            name, _, value = flag[2:].partition("=")
            flags[name] = value
            rest = rest.strip()
        json_form = None
        if rest.startswith("[") and keyword in {"RUN", "CMD", "ENTRYPOINT", "COPY", "ADD"}:
            try:
                parsed = json.loads(rest)
            except ValueError:
                parsed = None  # Docker treats a malformed array as shell form
            if isinstance(parsed, list) and all(isinstance(p, str) for p in parsed):
                json_form = parsed
        if keyword != "RUN" and keyword not in {"CMD", "ENTRYPOINT"} and not rest:
            raise BuildError(f"{source}:{line}: {keyword} needs an argument")
        if "from" in flags:
            raise BuildError(f"{source}:{line}: multi-stage builds ({keyword} --from) are not supported; "
                             "build the stage separately and COPY its files from the context")
        out.append(Instruction(keyword, rest, line, flags, json_form))
    if not out or out[0].keyword not in {"FROM", "ARG"}:
        raise BuildError(f"{source}: the first instruction must be FROM (or ARG before FROM)")
    if sum(1 for i in out if i.keyword == "FROM") != 1:
        raise BuildError(f"{source}: exactly one FROM is supported (no multi-stage builds)")
    return out


def expand(text: str, variables: dict[str, str]) -> str:
    """Substitute $VAR, ${VAR} and ${VAR:-default} the way Docker does in ENV/COPY/WORKDIR/... arguments."""
    def sub(match: re.Match[str]) -> str:
        name = match.group("braced") or match.group("plain")
        if name in variables and variables[name] != "":
            return variables[name]
        return match.group("default") or ""
    return _VAR.sub(sub, text)


def key_values(args: str, source: str, line: int) -> list[tuple[str, str]]:
    """`ENV A=1 B="two words"` and the legacy `ENV A value with spaces` forms."""
    try:
        words = shlex.split(args, posix=True)
    except ValueError as exc:
        raise BuildError(f"{source}:{line}: cannot parse {args!r}: {exc}") from None
    if words and "=" not in words[0]:
        key, _, value = args.partition(" ")
        return [(key, value.strip())]
    pairs = []
    for word in words:
        key, sep, value = word.partition("=")
        if not sep or not key:
            raise BuildError(f"{source}:{line}: expected KEY=VALUE, got {word!r}")
        pairs.append((key, value))
    return pairs


def command(instruction: Instruction) -> list[str]:
    """RUN/CMD/ENTRYPOINT as argv: exec form verbatim, shell form through /bin/sh -c."""
    if instruction.json_form is not None:
        return list(instruction.json_form)
    if not instruction.args:
        return []
    return ["/bin/sh", "-c", instruction.args]


def sources_and_dest(instruction: Instruction, source: str) -> tuple[list[str], str]:
    parts = instruction.json_form if instruction.json_form is not None else shlex.split(instruction.args)
    if len(parts) < 2:
        raise BuildError(f"{source}:{instruction.line}: {instruction.keyword} needs a source and a destination")
    for src in parts[:-1]:
        if re.match(r"^[a-z]+://", src):
            raise BuildError(f"{source}:{instruction.line}: {instruction.keyword} from a URL is not supported; "
                             "download the file into the build context first")
    return parts[:-1], parts[-1]
