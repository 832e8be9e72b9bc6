"""Command-line configuration: a flat dataclass of defaults, overridden by config files and --key=value.

    python train.py config/hotpotqa_http_llama3.py --updates=20 --resume

A config file is Python: its `key = value` assignments set keys (names starting with '_' and imported
modules are not keys). Arguments apply in order, so a later one wins. An unknown key or a value of the
wrong type is an error that names the key and lists the valid ones.
"""

import os
from dataclasses import fields


def typed(cls, key: str, value, source: str, text: bool = False):
    """`value` (a Python value, or command-line text) as the type of cls.<key>; a clear error otherwise."""
    types = {f.name: f.type for f in fields(cls)}
    if key not in types:
        raise ValueError(f"unknown config key {key!r} ({source}); valid keys: {', '.join(types)}")
    want = types[key]
    if text and want is not str:
        v = value.strip().lower()
        try:
            if want is bool:
                if v not in ("true", "false", "1", "0"):
                    raise ValueError
                return v in ("true", "1")
            return want(v)
        except ValueError:
            raise ValueError(f"config key {key!r} ({source}) must be {want.__name__}, "
                             f"got {value!r}") from None
    ok = isinstance(value, want) and not (want is int and isinstance(value, bool))
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok:
        raise ValueError(f"config key {key!r} ({source}) must be {want.__name__}, got {value!r}")
    return value


def parse(cls, argv):
    """cls() with each argument applied in order: a config file, --key=value, or a bare --flag (a bool
    key set to true)."""
    cfg = cls()
    for arg in argv:
        if arg.startswith("--"):
            key, eq, value = arg[2:].partition("=")
            key = key.replace("-", "_")
            if not eq:
                types = {f.name: f.type for f in fields(cls)}
                if types.get(key, bool) is not bool:
                    raise ValueError(f"config key {key!r} needs a value: --{key}=VALUE")
                value = "true"
            setattr(cfg, key, typed(cls, key, value, arg, text=True))
        else:
            if not os.path.isfile(arg):
                raise ValueError(f"config file {arg!r} not found (arguments are config files or --key=value)")
            namespace = {}
            with open(arg) as f:
                exec(compile(f.read(), arg, "exec"), namespace)  # noqa: S102 - the user's own config file
            for key, value in namespace.items():
                if key.startswith("_") or type(value).__name__ == "module":
                    continue
                setattr(cfg, key, typed(cls, key, value, f"in {arg}"))
    return cfg


def check(cfg, minimum: dict, choices: dict):
    """Range and choice checks, each error naming its key: minimum {key: lowest valid value}, choices
    {key: tuple of valid values}."""
    for key, low in minimum.items():
        if getattr(cfg, key) < low:
            raise ValueError(f"config key {key!r} must be >= {low}, got {getattr(cfg, key)}")
    for key, valid in choices.items():
        if getattr(cfg, key) not in valid:
            raise ValueError(f"config key {key!r} must be one of {valid}, got {getattr(cfg, key)!r}")
