"""Generate docs/api.md, the API reference, from the docstrings of callkit's public names.

Run ``python docs/gen_api.py`` after changing a public signature or docstring;
tests/test_api_docs.py fails while docs/api.md is out of date (``--check`` does the same).
"""

from __future__ import annotations

import enum
import importlib
import inspect
import sys
from pathlib import Path
from typing import Any

#: the public modules, in the order the reference lists them
MODULES = ["callkit", "callkit.media", "callkit.signaling", "callkit.testing"]
OUT = Path(__file__).resolve().parent / "api.md"


def _doc(obj: Any) -> str:
    doc = inspect.getdoc(obj) or ""
    return doc.strip()


class _Raw:
    """An annotation written as a string, shown without quotes."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def _unquote(annotation: Any) -> Any:
    return _Raw(annotation) if isinstance(annotation, str) else annotation


def _signature(obj: Any) -> str:
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return "(...)"
    params = [p.replace(annotation=_unquote(p.annotation)) for p in sig.parameters.values()]
    return str(sig.replace(parameters=params, return_annotation=_unquote(sig.return_annotation)))


def _public_names(module: Any) -> list[str]:
    names = getattr(module, "__all__", None)
    if names is None:
        names = [n for n in vars(module) if not n.startswith("_")]
    return sorted(names, key=str.lower)


def _members(cls: type) -> list[tuple[str, Any]]:
    """Public methods and properties defined by ``cls`` or a callkit base class."""
    out: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        if not klass.__module__.startswith("callkit") or issubclass(klass, enum.Enum):
            continue
        for name, value in vars(klass).items():
            if name.startswith("_"):
                continue
            if isinstance(value, (staticmethod, classmethod)):
                value = value.__func__
            if inspect.isfunction(value) or isinstance(value, property):
                out[name] = value
    return sorted(out.items())


def _class_section(qual: str, cls: type) -> list[str]:
    lines = [f"### `{qual}`", ""]
    if issubclass(cls, enum.Enum):
        lines.append(f"`class {cls.__name__}({cls.__mro__[1].__name__})`")
        lines.append("")
        if _doc(cls):
            lines += [_doc(cls), ""]
        members = ", ".join(f"`{m.name}` = {m.value!r}" for m in cls)  # type: ignore[var-annotated]
        lines += [f"Members: {members}", ""]
        return lines
    init = cls.__init__ if "__init__" in vars(cls) or cls.__init__ is not object.__init__ else None
    sig = _signature(cls) if init is not None else "()"
    lines += [f"`class {cls.__name__}{sig}`", ""]
    if _doc(cls):
        lines += [_doc(cls), ""]
    for name, member in _members(cls):
        if isinstance(member, property):
            lines.append(f"- property `{name}`" + (f": {_doc(member)}" if _doc(member) else ""))
        else:
            prefix = "async " if inspect.iscoroutinefunction(member) else ""
            head = f"- `{prefix}{name}{_signature(member)}`"
            doc = _doc(member)
            lines.append(head + (f"  \n  {doc.replace(chr(10), chr(10) + '  ')}" if doc else ""))
    lines.append("")
    return lines


def render() -> str:
    """The whole reference as Markdown."""
    lines = [
        "# API reference",
        "",
        "Generated from the docstrings by `python docs/gen_api.py`; do not edit by hand.",
        "Every public name of " + ", ".join(f"`{m}`" for m in MODULES) + ", with its signature.",
        "",
    ]
    for modname in MODULES:
        module = importlib.import_module(modname)
        lines += [f"## `{modname}`", ""]
        first = _doc(module).split("\n\n")[0]
        if first:
            lines += [first, ""]
        for name in _public_names(module):
            obj = getattr(module, name)
            qual = f"{modname}.{name}"
            if inspect.isclass(obj):
                lines += _class_section(qual, obj)
            elif inspect.isfunction(obj) or inspect.isbuiltin(obj):
                prefix = "async " if inspect.iscoroutinefunction(obj) else ""
                lines += [f"### `{qual}`", "", f"`{prefix}{name}{_signature(obj)}`", ""]
                if _doc(obj):
                    lines += [_doc(obj), ""]
            else:
                value = repr(obj) if not isinstance(obj, (dict, frozenset)) else type(obj).__name__
                if len(value) > 120:
                    value = value[:117] + "..."
                lines += [f"### `{qual}`", "", f"constant: `{value}`", ""]
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT} is out of date: run python docs/gen_api.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
