"""Architecture config files that users name (``convert --config``): the
official yacs yaml, with the files its ``BASE`` / ``_BASE_`` list names merged
under it, or a runtime config in JSON.

Such files come from anywhere, so reading one is bounded before any value is
used: a file is read only if it is a regular file of at most ``MAX_BYTES``
(never cut short); it may hold at most ``MAX_NODES`` values nested at most
``MAX_DEPTH`` deep, each scalar at most ``MAX_SCALAR`` characters; a config and
its bases are at most ``MAX_FILES`` files, each read once. YAML anchors and
aliases (which the official configs never use) and tags other than the plain
scalar, list and mapping ones are refused, and so are YAML 1.1's base-60
numbers. Every refusal is a :class:`ConversionError` naming the file (and the
key where there is one).
"""

from __future__ import annotations

import json
import os

from .checkpoint import _short, open_regular
from .errors import ConversionError

MAX_BYTES = 1 << 20
MAX_NODES = 20_000
MAX_DEPTH = 32
MAX_SCALAR = 4096
MAX_FILES = 16
# Digits in a number: a float or int of the official configs has a handful.
MAX_NUMBER_CHARS = 64
BASE_KEYS = ("BASE", "_BASE_")  # the official config.py's name, and yacs/fvcore's


def _text(path: str) -> str:
    """The file's text: a regular file (checkpoint.open_regular) of at most
    MAX_BYTES, refused, never cut, past that."""
    try:
        with open_regular(path, "a config file", ConversionError) as f:
            data = f.read(MAX_BYTES + 1)
    except (OSError, ValueError) as e:  # ValueError: a NUL in the name
        raise ConversionError(f"{path}: cannot read the config: {e}") from None
    if len(data) > MAX_BYTES:
        raise ConversionError(f"{path}: the config is over the limit of {MAX_BYTES} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConversionError(f"{path}: the config is not UTF-8 text: {e}") from None


def check_tree(doc, path: str) -> None:
    """Refuse a parsed document of more than MAX_NODES values, MAX_DEPTH levels or
    MAX_SCALAR-character strings (walked without recursion)."""
    nodes, stack = 0, [(doc, 1)]
    while stack:
        value, depth = stack.pop()
        nodes += 1
        if nodes > MAX_NODES:
            raise ConversionError(f"{path}: the config holds more than {MAX_NODES} values")
        if depth > MAX_DEPTH:
            raise ConversionError(f"{path}: the config is nested more than {MAX_DEPTH} levels deep")
        if isinstance(value, dict):
            for k, v in value.items():
                if not isinstance(k, str) or len(k) > MAX_SCALAR:
                    raise ConversionError(f"{path}: a config key is not a string of at most {MAX_SCALAR} characters")
                stack.append((v, depth + 1))
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)
        elif isinstance(value, str) and len(value) > MAX_SCALAR:
            raise ConversionError(f"{path}: a config value is longer than {MAX_SCALAR} characters")


# JSON -----------------------------------------------------------------------------------

def _json_depth(text: str) -> int:
    """How deep brackets nest, outside strings (checked before json's recursive parser)."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def _json_number(kind):
    def parse(text: str):
        if len(text) > MAX_NUMBER_CHARS:
            raise ValueError(f"a number of {len(text)} characters")
        return kind(text)
    return parse


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number a config can hold")


def load_json(path: str):
    """A JSON config, bounded as the module says."""
    text = _text(path)
    if _json_depth(text) > MAX_DEPTH:
        raise ConversionError(f"{path}: the config is nested more than {MAX_DEPTH} levels deep")
    try:
        doc = json.loads(text, parse_int=_json_number(int), parse_float=_json_number(float),
                         parse_constant=_no_constant)
    except ValueError as e:
        raise ConversionError(f"{path}: the config is not valid JSON: {e}") from None
    check_tree(doc, path)
    return doc


# YAML -----------------------------------------------------------------------------------

def _yaml_loader():
    """A SafeLoader that counts what it composes and builds plain values only."""
    import yaml
    from yaml.constructor import ConstructorError, SafeConstructor

    class Loader(yaml.SafeLoader):
        yaml_constructors = {tag: SafeConstructor.yaml_constructors[tag] for tag in (
            "tag:yaml.org,2002:null", "tag:yaml.org,2002:bool", "tag:yaml.org,2002:str",
            "tag:yaml.org,2002:seq", "tag:yaml.org,2002:map", None)}  # None: any other tag, refused

        def __init__(self, stream):
            super().__init__(stream)
            self.nodes = 0
            self.depth = 0

        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                raise ConstructorError(None, None, "aliases (*name) are not read in configs", self.peek_event().start_mark)
            event = self.peek_event()
            if getattr(event, "anchor", None) is not None:
                raise ConstructorError(None, None, "anchors (&name) are not read in configs", event.start_mark)
            self.nodes += 1
            if self.nodes > MAX_NODES:
                raise ConstructorError(None, None, f"more than {MAX_NODES} values", event.start_mark)
            self.depth += 1
            try:
                if self.depth > MAX_DEPTH:
                    raise ConstructorError(None, None, f"nested more than {MAX_DEPTH} levels deep", event.start_mark)
                return super().compose_node(parent, index)
            finally:
                self.depth -= 1

        def _number(self, node, kind):
            text = str(node.value).replace("_", "")
            if len(text) > MAX_NUMBER_CHARS or ":" in text:  # ':' is YAML 1.1's base 60
                raise ConstructorError(None, None, f"{_short(node.value, 40)} is not a number a config can hold",
                                       node.start_mark)
            return kind(self, node)

        def construct_int(self, node):
            return self._number(node, SafeConstructor.construct_yaml_int)

        def construct_float(self, node):
            return self._number(node, SafeConstructor.construct_yaml_float)

        def construct_plain(self, node):  # a timestamp, as the text it is written as
            return self.construct_scalar(node)

    Loader.add_constructor("tag:yaml.org,2002:int", Loader.construct_int)
    Loader.add_constructor("tag:yaml.org,2002:float", Loader.construct_float)
    Loader.add_constructor("tag:yaml.org,2002:timestamp", Loader.construct_plain)
    return Loader


def load_yaml(path: str):
    """One yaml file, bounded as the module says (its bases not merged)."""
    try:
        import yaml
    except ImportError:
        raise ConversionError(f"{path}: reading yaml configs needs PyYAML (pip install pyyaml)") from None
    text, loader = _text(path), None
    try:
        loader = _yaml_loader()(text)  # checks the characters first
        loader.name = path  # for the line and column in its messages
        doc = loader.get_single_data()
    except yaml.YAMLError as e:
        raise ConversionError(f"{path}: cannot read the config: {' '.join(str(e).split())[:500]}") from None
    except RecursionError:
        raise ConversionError(f"{path}: the config is nested too deep") from None
    finally:
        if loader is not None:
            loader.dispose()
    check_tree(doc, path)
    return {} if doc is None else doc


def load_yacs(path: str) -> dict:
    """An official yacs yaml file with its base files merged under it, as the
    official ``config.py`` does: each base in order, then the file itself. A
    file that names itself (directly or through its bases) is refused; so are
    more than MAX_FILES inclusions in all."""
    cache: dict[str, dict] = {}
    count = 0

    def read(p: str, chain: tuple) -> dict:
        nonlocal count
        if "\0" in p:
            raise ConversionError(f"{p!r}: a config file name cannot hold a NUL character")
        real = os.path.realpath(p)
        if real in chain:
            raise ConversionError(f"{p}: the config includes itself through its base files")
        count += 1
        if count > MAX_FILES:
            raise ConversionError(f"{p}: a config and its base files are more than {MAX_FILES} files")
        if real not in cache:
            doc = load_yaml(p)
            if not isinstance(doc, dict):
                raise ConversionError(f"{p}: not a yacs config (a mapping at the top)")
            cache[real] = doc
        doc = dict(cache[real])
        merged: dict = {}
        for key in BASE_KEYS:
            bases = doc.pop(key, None)
            if bases in (None, "", []):
                continue
            if isinstance(bases, str):
                bases = [bases]
            if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
                raise ConversionError(f"{p}: config field {key} must be a file name or a list of them")
            for base in bases:
                if base:
                    _merge(merged, read(os.path.join(os.path.dirname(p), base), chain + (real,)))
        return _merge(merged, doc)

    return read(os.fspath(path), ())


def _merge(into: dict, new: dict) -> dict:
    """``new`` merged into ``into``, mapping by mapping (copies: no value is shared)."""
    stack = [(into, new)]
    while stack:
        dst, src = stack.pop()
        for k, v in src.items():
            if isinstance(v, dict):
                if not isinstance(dst.get(k), dict):
                    dst[k] = {}
                stack.append((dst[k], v))
            else:
                dst[k] = list(v) if isinstance(v, list) else v
    return into
