"""The options of a registered model: the keyword parameters of its class (or builder), with
their defaults, declared types and one line of meaning each.

They are read from the code itself, so ``kexue train MODEL --help`` and the checks on ``--set``
cannot drift from what the model accepts:

- names, defaults and types come from the signature of the class's ``__init__`` (following
  ``**kwargs`` into the base class, as BN-VAE forwards to VAE);
- the meaning comes from an ``Options:`` section of the class docstring, one ``name: text``
  line per option (a test checks that every option of every registered model has one).

Values are checked against the declared type: ``int``, ``float``, ``bool``, ``str``, ``None``
(``Optional[...]``) and sequences (``Sequence[int]``, ``Tuple[...]``, given as JSON lists) are
understood; an annotation outside that set accepts any value.
"""
from __future__ import annotations

import inspect
import json
import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple

_SEQUENCE_NAMES = ("Sequence", "Tuple", "List", "tuple", "list")


@dataclass(frozen=True)
class Option:
    """One ``--set`` key of a model."""

    name: str
    default: Any
    type: str  # the annotation as written in the signature, e.g. "Optional[int]"
    help: str

    @property
    def kinds(self) -> Optional[Tuple[str, ...]]:
        """The value kinds the annotation allows (subset of int, float, bool, str, none, list),
        or None when the annotation is not one this module understands."""
        return _kinds(self.type)

    def check(self, value: Any) -> Any:
        """``value`` converted to the option's type (ints are accepted for floats, lists for
        sequences); a ValueError naming the option and the expected type otherwise."""
        kinds = self.kinds
        if kinds is None:
            return value
        if value is None and "none" in kinds:
            return None
        if isinstance(value, bool):
            if "bool" in kinds:
                return value
        elif isinstance(value, int):
            if "int" in kinds:
                return value
            if "float" in kinds:
                return float(value)
        elif isinstance(value, float):
            if "float" in kinds:
                return value
        elif isinstance(value, str):
            if "str" in kinds:
                return value
        elif isinstance(value, (list, tuple)):
            if "list" in kinds:
                return self._check_items(value)
        raise ValueError(f"option {self.name}: expected {self.type}, got {value!r}")

    def _check_items(self, value):
        """A sequence value with its items checked against the annotation's item type
        (``Sequence[int]``, ``Tuple[float, ...]``, ``List[str]``; a fixed ``Tuple[int, int]``
        also by length)."""
        items = _item_types(self.type)
        if items is None:
            return value
        types, fixed = items
        if fixed and len(value) != len(types):
            raise ValueError(f"option {self.name}: expected {self.type} ({len(types)} items), got {value!r}")
        out = []
        for k, item in enumerate(value):
            kinds = _kinds(types[k] if fixed else types[0])
            if kinds is None:
                out.append(item)
            elif isinstance(item, bool):
                if "bool" not in kinds:
                    raise ValueError(f"option {self.name}: item {k} of {value!r} is not {types[k if fixed else 0]}")
                out.append(item)
            elif isinstance(item, int) and ("int" in kinds or "float" in kinds):
                out.append(item if "int" in kinds else float(item))
            elif isinstance(item, float) and "float" in kinds:
                out.append(item)
            elif isinstance(item, str) and "str" in kinds:
                out.append(item)
            else:
                raise ValueError(f"option {self.name}: item {k} of {value!r} is not {types[k if fixed else 0]}")
        return type(value)(out) if isinstance(value, tuple) else out

    def parse(self, text: str) -> Any:
        """A command-line value for this option, read by its declared type: ``none``/``null``,
        ``true``/``false`` (also yes/no, on/off), numbers, JSON lists, or the text itself."""
        kinds = self.kinds
        if kinds is None:
            return parse_loose(text)
        s = text.strip()
        low = s.lower()
        if "none" in kinds and low in ("none", "null"):
            return None
        if "bool" in kinds and low in _BOOLS:
            return _BOOLS[low]
        if kinds == ("bool",) and low in ("1", "0"):
            return low == "1"
        if "int" in kinds and re.fullmatch(r"[+-]?\d+", s):
            return int(s)
        if "float" in kinds:
            try:
                v = float(s)
            except ValueError:
                pass
            else:
                if math.isfinite(v):
                    return v
        if "list" in kinds and s.startswith("["):
            try:
                v = json.loads(s)
            except ValueError:
                pass
            else:
                if isinstance(v, list):
                    return v
        if "str" in kinds:
            return s
        example = " as a JSON list such as [2, 2]" if "list" in kinds else ""
        raise ValueError(f"--set {self.name}={text}: expected {self.type}{example} (default {self.default!r})")


_BOOLS = {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False}


def parse_loose(text: str) -> Any:
    """A value of unknown type: true/false/yes/no/on/off, none/null, an int, a float, a JSON
    list or object, else the string itself."""
    low = text.strip().lower()
    if low in _BOOLS:
        return _BOOLS[low]
    if low in ("none", "null"):
        return None
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    if text.strip()[:1] in "[{":
        try:
            return json.loads(text)
        except ValueError:
            pass
    return text


def _split_top(text: str, sep: str = ",") -> List[str]:
    """``"int, Tuple[int, int]"`` -> ``["int", "Tuple[int, int]"]`` (separators outside brackets)."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch == sep and depth == 0:
            parts.append(cur.strip())
            cur = ""
            continue
        depth += ch == "["
        depth -= ch == "]"
        cur += ch
    if cur.strip():
        parts.append(cur.strip())
    return parts


def _item_types(annotation: str) -> Optional[Tuple[List[str], bool]]:
    """(item annotations, fixed length?) of the sequence member of ``annotation``:
    ``Sequence[int]`` -> (["int"], False), ``Tuple[int, int]`` -> (["int", "int"], True),
    ``Tuple[int, ...]`` -> (["int"], False); None when no item type is written."""
    a = annotation.strip().replace("typing.", "")
    m = re.fullmatch(r"(Optional|Union)\[(.*)\]", a)
    members = _split_top(m.group(2)) if m else _split_top(a, "|")
    for member in members:
        mm = re.fullmatch(r"(\w+)\[(.*)\]", member.strip())
        if mm and mm.group(1) in _SEQUENCE_NAMES:
            inner = _split_top(mm.group(2))
            if len(inner) == 2 and inner[1] == "...":
                return [inner[0]], False
            if mm.group(1) in ("Tuple", "tuple"):
                return inner, True
            return inner[:1], False
    return None


def _kinds(annotation: str) -> Optional[Tuple[str, ...]]:
    a = annotation.strip().replace("typing.", "")
    if not a:
        return None
    if len(_split_top(a, "|")) > 1:
        members = _split_top(a, "|")
    else:
        m = re.fullmatch(r"(Optional|Union)\[(.*)\]", a)
        if m:
            members = _split_top(m.group(2)) + (["None"] if m.group(1) == "Optional" else [])
        else:
            members = [a]
    kinds: List[str] = []
    for member in members:
        head = member.split("[", 1)[0].strip()
        if head in ("int", "float", "bool", "str"):
            kinds.append(head)
        elif head in ("None", "NoneType"):
            kinds.append("none")
        elif head in _SEQUENCE_NAMES:
            kinds.append("list")
        else:
            return None
    return tuple(kinds)


# ---- reading options off a class ---------------------------------------------------------------

_OPTIONS_HEADER = re.compile(r"^\s*Options:\s*$")
_OPTION_LINE = re.compile(r"^\s*(\w+)\s*:\s*(.+)$")


def documented_options(obj: Any) -> Dict[str, str]:
    """``{name: meaning}`` from the ``Options:`` section of ``obj``'s docstring (lines
    ``name: text``; an indented line continues the one above; a blank line ends the section)."""
    doc = inspect.getdoc(obj) or ""
    out: Dict[str, str] = {}
    inside, last, indent = False, None, None
    for line in doc.splitlines():
        if _OPTIONS_HEADER.match(line):
            inside, last, indent = True, None, None
            continue
        if not inside:
            continue
        if not line.strip():
            inside = False
            continue
        here = len(line) - len(line.lstrip())
        m = _OPTION_LINE.match(line)
        if m and (indent is None or here <= indent):
            indent = here
            last = m.group(1)
            out[last] = m.group(2).strip()
        elif last is not None:
            out[last] += " " + line.strip()
    return out


def _parameters(target: Callable) -> Tuple[List[inspect.Parameter], List[Any]]:
    """The keyword-able parameters of ``target`` (a class: its ``__init__``, following
    ``**kwargs`` into the bases) and the objects whose docstrings document them."""
    params: List[inspect.Parameter] = []
    docs: List[Any] = []
    chain = inspect.getmro(target) if inspect.isclass(target) else (target,)
    seen = set()
    for obj in chain:
        fn = obj.__init__ if inspect.isclass(obj) else obj
        if inspect.isclass(obj) and "__init__" not in vars(obj):
            continue
        if obj is object:
            break
        sig = inspect.signature(fn)
        docs.append(obj)
        more = False
        for p in sig.parameters.values():
            if p.name == "self" or p.kind == p.VAR_POSITIONAL:
                continue
            if p.kind == p.VAR_KEYWORD:
                more = True
                continue
            if p.name not in seen:
                seen.add(p.name)
                params.append(p)
        if not more:
            break
    return params, docs


def _annotation_text(p: inspect.Parameter) -> str:
    a = p.annotation
    if a is inspect.Parameter.empty:
        return type(p.default).__name__ if p.default not in (None, inspect.Parameter.empty) else ""
    return a if isinstance(a, str) else inspect.formatannotation(a)


def options_of(target: Callable, *, data: Iterable[str] = (), defaults: Optional[Mapping[str, Any]] = None,
               derived: Optional[Mapping[str, str]] = None) -> Tuple[Option, ...]:
    """The options of ``target`` (a model class or a builder function).

    ``data`` names the parameters the data set fills (event shape, levels, vocabulary), which
    are not options; ``defaults`` replaces signature defaults (a registration that presets some
    options); ``derived`` describes defaults computed from the data (shown instead of None).
    Parameters without a default that the data does not fill are not options either (the builder
    must supply them)."""
    data = set(data)
    defaults = dict(defaults or {})
    derived = dict(derived or {})
    params, docs = _parameters(target)
    meaning: Dict[str, str] = {}
    for obj in reversed(docs):  # a subclass's line wins over its base's
        meaning.update(documented_options(obj))
    out = []
    for p in params:
        if p.name in data or p.name == "dataset":
            continue
        if p.default is inspect.Parameter.empty and p.name not in defaults:
            continue
        default = defaults.get(p.name, p.default)
        if p.name in derived:
            default = Derived(derived[p.name])
        out.append(Option(p.name, default, _annotation_text(p), meaning.get(p.name, "")))
    return tuple(out)


@dataclass(frozen=True)
class Derived:
    """A default the builder computes from the data (e.g. "half the line length")."""

    rule: str

    def __repr__(self) -> str:
        return f"<{self.rule}>"


__all__ = ["Derived", "Option", "documented_options", "options_of", "parse_loose"]
