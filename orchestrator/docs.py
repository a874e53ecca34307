"""The study-key reference, generated from the typed configs so it cannot drift from the code.

Every field of :class:`~orchestrator.config.StudyConfig` (and the trainer's configs it nests) is
listed with its type, default and the comment written next to it in the source. The README keeps
the table between two markers; ``python -m orchestrator.docs README.md`` rewrites it and a test
fails when it is stale.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import sys
import textwrap
import typing
from pathlib import Path

from omegaconf import MISSING

from orchestrator.config import StudyConfig

BEGIN, END = "<!-- study-keys:begin -->", "<!-- study-keys:end -->"


def _field_comments(cls: type) -> dict[str, str]:
    """Trailing ``# comments`` of a dataclass's field lines, by field name."""
    source = textwrap.dedent(inspect.getsource(cls))
    lines = source.splitlines()
    tree = ast.parse(source)
    out = {}
    for node in tree.body[0].body:  # type: ignore[attr-defined]
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            comment = []
            for line in lines[node.lineno - 1 : node.end_lineno]:
                if "#" in line:
                    comment.append(line.split("#", 1)[1].strip())
            # comment lines directly above the field continue its description
            above = []
            i = node.lineno - 2
            while i >= 0 and lines[i].strip().startswith("#"):
                above.insert(0, lines[i].strip().lstrip("#").strip())
                i -= 1
            out[node.target.id] = " ".join(above + comment)
    return out


def _type_name(tp: object) -> str:
    text = str(tp).replace("typing.", "").replace("<class '", "").replace("'>", "")
    return text.replace("NoneType", "null")


def _default(f: dataclasses.Field) -> str:
    if f.default is MISSING:
        return "required"
    if f.default is not dataclasses.MISSING:
        return "null" if f.default is None else repr(f.default)
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        value = f.default_factory()  # type: ignore[misc]
        if isinstance(value, list) and value and dataclasses.is_dataclass(value[0]):
            # a list of sections: its entries' non-default keys, e.g. [{family: chinchilla}]
            return repr([{k: v for k, v in dataclasses.asdict(item).items() if v} for item in value])
        return "" if dataclasses.is_dataclass(value) else repr(value)
    return ""


def rows(cls: type = StudyConfig, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(key, type, default, description) for every leaf and section of ``cls``."""
    hints = typing.get_type_hints(cls)
    comments = _field_comments(cls)
    out = []
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        tp = hints[f.name]
        inner = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)]
        target = tp if dataclasses.is_dataclass(tp) else (inner[0] if inner else None)
        if target is not None:
            doc = (inspect.getdoc(target) or "").split("\n")[0]
            origin = typing.get_origin(tp)
            kind, child = {dict: ("map of sections", ".<name>."), list: ("list of sections", "[].")}.get(origin, ("section", "."))  # type: ignore[call-overload]
            default = _default(f) if origin is list else ""
            out.append((key, kind, default, comments.get(f.name) or doc))
            out.extend(rows(target, key + child))
        else:
            out.append((key, _type_name(tp), _default(f), comments.get(f.name, "")))
    return out


def reference() -> str:
    """The Markdown table of every study key."""
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for key, tp, default, doc in rows():
        cell = doc.replace("|", "\\|")
        lines.append(f"| `{key}` | {tp.replace('|', 'or')} | {default.replace('|', 'or')} | {cell} |")
    return "\n".join(lines)


def update(path: Path) -> bool:
    """Rewrite the reference between the markers in ``path``; True when it changed."""
    text = path.read_text()
    if BEGIN not in text or END not in text:
        raise ValueError(f"{path} has no {BEGIN} ... {END} block")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    new = f"{head}{BEGIN}\n{reference()}\n{END}{tail}"
    if new != text:
        path.write_text(new)
    return new != text


if __name__ == "__main__":
    for arg in sys.argv[1:] or ["README.md"]:
        print(f"{arg}: {'updated' if update(Path(arg)) else 'up to date'}")
