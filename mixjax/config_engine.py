"""The engine behind every typed configuration in mixjax (the run :class:`~mixjax.config.Config`,
the DG sweep's config, the search settings, a mixer's hyperparameters): config files
(``get_config()``), dotted ``key=value`` overrides read as Python literals, and coercion of
each value to its field's declared type, with one :class:`ConfigError` naming the key
when a value does not fit. Nothing here knows a particular config."""

from __future__ import annotations

import ast
import collections.abc
import dataclasses
import functools
import importlib.util
import pathlib
import re
import sys
import types
import typing
from typing import Any

from mixjax.errors import ConfigError


def run_config_file(path: str | pathlib.Path, expected: type) -> Any:
    """Runs ``get_config()`` of the Python file at ``path``; it must return an ``expected``."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    spec = importlib.util.spec_from_file_location(f"_mixjax_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    # The folder above configs/ goes on sys.path while the file runs, so a config
    # can extend another (`from configs.lm_tiny_uniform import get_config`)
    # whatever the working directory of the `mixjax` command.
    root = str(path.resolve().parent.parent)
    sys.path.insert(0, root)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:
        raise ConfigError(f"{e.filename or path}:{e.lineno}: syntax error: {e.msg}") from None
    finally:
        sys.path.remove(root)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config file {str(path)!r} defines no get_config()")
    cfg = module.get_config()
    if not isinstance(cfg, expected):
        raise ConfigError(f"{path}: get_config() returned {type(cfg).__name__}, "
                          f"not {expected.__module__}.{expected.__qualname__}")
    return cfg


def parse_value(text: str) -> Any:
    """A Python literal if ``text`` is one, a bare-word list ``[a,b]``, else the bare string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        if text.startswith("[") and text.endswith("]"):   # `--set train.trackers=[tensorboard,wandb]`
            return [parse_value(w.strip()) for w in text[1:-1].split(",") if w.strip()]
        return text


def apply_override(cfg: Any, item: str) -> None:
    """Applies one ``a.b.c=value`` override in place."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form key=value")
    key, text = item.split("=", 1)
    set_value(cfg, key.strip(), parse_value(text.strip()))


def set_value(cfg: Any, key: str, value: Any) -> None:
    """Sets the dotted ``key`` of the dataclass ``cfg`` to ``value`` coerced to the field's
    declared type (sections are dataclasses; dict-typed fields take any sub-key)."""
    parts = key.split(".")
    obj: Any = cfg
    for i, part in enumerate(parts[:-1]):
        if dataclasses.is_dataclass(obj):
            if part not in _field_names(obj):
                raise ConfigError(f"unknown config key {'.'.join(parts[:i + 1])!r}; "
                                  f"known: {sorted(_field_names(obj))}")
            nxt = getattr(obj, part)
            ftype = _field_type(type(obj), part)
            if isinstance(ftype, type) and dataclasses.is_dataclass(ftype) \
                    and not dataclasses.is_dataclass(nxt):   # `cfg.data.tokenizer = "hf"` in a file
                nxt = _coerce(nxt, ftype, ".".join(parts[:i + 1]))
                setattr(obj, part, nxt)
            if nxt is None and _is_dict_type(ftype):
                nxt = {}
                setattr(obj, part, nxt)
            obj = nxt
        elif isinstance(obj, dict):
            obj = obj.setdefault(part, {})
        else:
            raise ConfigError(f"config key {'.'.join(parts[:i + 1])!r} is not a section")
    last = parts[-1]
    if dataclasses.is_dataclass(obj):
        if last not in _field_names(obj):
            raise ConfigError(f"unknown config key {key!r}; known: {sorted(_field_names(obj))}")
        ftype = _field_type(type(obj), last)
        setattr(obj, last, _coerce(value, ftype, key))
    elif isinstance(obj, dict):
        obj[last] = value
    else:
        raise ConfigError(f"config key {key!r}: parent is not a section")


def _field_names(obj) -> set[str]:
    return {f.name for f in dataclasses.fields(obj)}


@functools.lru_cache(maxsize=None)
def _type_hints(cls) -> dict:
    # get_type_hints evaluates every string annotation: caching it made validating the
    # leaderboard's 216 configs 10x faster
    return typing.get_type_hints(cls)


def _field_type(cls, name):
    return _type_hints(cls)[name]


def _is_dict_type(tp) -> bool:
    return any(typing.get_origin(a) is dict or a is dict for a in _union_args(tp))


def _union_args(tp):
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return typing.get_args(tp)
    return (tp,)


def _coerce(value: Any, tp, key: str) -> Any:
    """``value`` converted to type ``tp`` where lossless (int -> float, list -> tuple)."""
    args = _union_args(tp)
    if value is None:
        if type(None) in args:
            return None
        raise ConfigError(f"config key {key!r} may not be None")
    errors = []
    for a in args:
        if a is type(None):
            continue
        if isinstance(a, type) and dataclasses.is_dataclass(a):   # a section
            if isinstance(value, a):
                return value
            if isinstance(value, str):   # `--set data.tokenizer=byte`: its first field
                return a(**{dataclasses.fields(a)[0].name: value})
            if isinstance(value, dict):
                section = a()
                for k, v in value.items():
                    if k not in _field_names(section):
                        raise ConfigError(f"unknown config key {key + '.' + str(k)!r}; "
                                          f"known: {sorted(_field_names(section))}")
                    setattr(section, k, _coerce(v, _field_type(a, k), f"{key}.{k}"))
                return section
            errors.append(a.__name__)
            continue
        origin = typing.get_origin(a) or a
        if origin is bool:
            if isinstance(value, bool):
                return value
        elif origin is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
        elif origin is float:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
        elif origin is str:
            if isinstance(value, str):
                return value
        elif origin is tuple:
            if isinstance(value, (list, tuple)):
                item = typing.get_args(a)[0] if typing.get_args(a) else Any
                return tuple(_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value))
            if isinstance(value, str):  # `--set data.domains=web` -> ("web",)
                return (value,)
        elif origin is collections.abc.Sequence:    # a hyperparameter's Sequence[float]
            if isinstance(value, (list, tuple)):
                item = typing.get_args(a)[0] if typing.get_args(a) else Any
                return tuple(_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value))
        elif origin is list:
            if isinstance(value, (list, tuple)):
                item = typing.get_args(a)[0] if typing.get_args(a) else Any
                return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
            if isinstance(value, str):  # `--search-set baselines=uniform` -> ["uniform"]
                return [value]
        elif origin in (dict, collections.abc.Mapping):
            if isinstance(value, collections.abc.Mapping):
                kt, vt = typing.get_args(a) or (Any, Any)
                return {_coerce(k, kt, f"{key} key"): _coerce(v, vt, f"{key}[{k!r}]")
                        for k, v in value.items()}
        elif a is Any:
            return value
        errors.append(getattr(a, "__name__", str(a)))
    hint = (" (a --set value is read as a Python literal, e.g. 0.5, [1, 2] or {'web': 0.7})"
            if isinstance(value, str) else "")
    raise ConfigError(f"config key {key!r}: expected {_type_name(tp)}, got "
                      f"{type(value).__name__} {value!r}{hint}")


def _type_name(tp) -> str:
    """``Optional[Mapping[str, float]]`` rather than typing's repr with module prefixes."""
    if isinstance(tp, type):
        return tp.__name__
    return re.sub(r"<class '(?:[\w.]+\.)?(\w+)'>", r"\1",
                  re.sub(r"\b(?:typing|collections\.abc)\.", "", str(tp)))


def check_types(obj, prefix: str = "") -> None:
    """Coerces every field of the dataclass ``obj`` (recursively) to its declared type, or
    raises ConfigError naming the key: the engine behind :func:`validate`, shared by the DG
    sweep config and the search settings."""
    for f in dataclasses.fields(obj):
        key = f"{prefix}{f.name}"
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            check_types(value, key + ".")
        else:
            setattr(obj, f.name, _coerce(value, _field_type(type(obj), f.name), key))


def check_hparams(cls: type, hparams: dict, prefix: str) -> None:
    """Raises ConfigError naming ``prefix.key`` where a value of ``hparams`` does not fit the
    type of the dataclass ``cls``'s field (a mixer's hyperparameters are typed by the class
    that owns them). The values are left as given (the run's identity hashes them as written);
    names ``cls`` does not declare are left to the caller's check."""
    hints = _type_hints(cls)
    fields = _field_names(cls)
    for k, v in hparams.items():
        if k in fields:
            _coerce(v, hints[k], f"{prefix}.{k}")
