"""What every command line shares: a config Hydra cannot compose ends in one `error:` line."""

from __future__ import annotations

import dataclasses
import difflib
import functools
import os
import sys
import typing
from collections.abc import Callable, Iterator
from pathlib import Path

from hydra.errors import CompactHydraException, MissingConfigException, OverrideParseException
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from mlp_lab.messages import first_line, not_a_list

# The configs: those a wheel carries in mlp_lab/conf, else the project's conf/ (a checkout, an
# editable install). Absolute, so that Hydra finds them from any working directory, however a
# command is started (`python -m`, a console script, a call of its main()).
_PACKAGE = Path(__file__).resolve().parent
CONF_DIR = str(next((d for d in (_PACKAGE / "conf",) if d.is_dir()), _PACKAGE.parent / "conf"))


def schema_keys(schema: type, prefix: str = "") -> Iterator[tuple[str, bool]]:
    """Every dotted key of a schema, each with whether it is a section that may be null."""
    hints = typing.get_type_hints(schema)
    for field in dataclasses.fields(schema):
        hint, key = hints[field.name], f"{prefix}{field.name}"
        nested = [t for t in (hint, *typing.get_args(hint)) if dataclasses.is_dataclass(t)]
        if nested:
            if type(None) in typing.get_args(hint):
                yield key, True
            yield from schema_keys(nested[0], f"{key}.")
        else:
            yield key, False


def setting_names(schema: type) -> list[str]:
    """Every setting of a schema as a dotted key."""
    return [key for key, section in schema_keys(schema) if not section]


def override_key(override: str) -> str:
    """The key an override sets, adds or deletes: `+model.hidden=[256]` → `model.hidden`."""
    return override.split("=", 1)[0].lstrip("+~")


def setting_in_a_section_that_is_off(overrides: list[str], schema: type) -> str | None:
    """The first override that sets a key inside a section left null, with the option to select."""
    sections = [key for key, section in schema_keys(schema) if section]
    for override in overrides:
        key = override_key(override)
        for section in sections:
            if key.startswith(f"{section}."):
                group, option = section.rsplit(".", 1)
                return (
                    f"error: {key} is in {section}, which is off: select it first, "
                    f"{group}={option} {override}"
                )
    return None


def not_a_setting(key: str, command: str, schema: type | None) -> str:
    """The error line for a key that is no setting, with the closest one."""
    given = [override_key(o) for o in sys.argv[1:]]
    key = next((k for k in given if k.startswith(f"{key}.")), key)
    close = difflib.get_close_matches(key, setting_names(schema) if schema else [], n=1)
    hint = f": did you mean {close[0]}?" if close else ""
    every = f"(every setting: python -m {command} --cfg job)"
    return f"error: {key} is not a setting of {command}{hint} {every}"


def added_key_that_is_no_setting(overrides: list[str], command: str, schema: type) -> str | None:
    """The error line for the first `+key=` that names no setting."""
    known = setting_names(schema)
    groups = {p.relative_to(CONF_DIR).as_posix() for p in Path(CONF_DIR).rglob("*") if p.is_dir()}
    for override in overrides:
        if not override.startswith("+") or "=" not in override:
            continue
        key = override_key(override)
        if key.startswith("hydra.") or key in groups or key in known:
            continue
        if not any(key.startswith(f"{name}.") for name in known):  # a key of a dict setting
            return not_a_setting(key, command, schema)
    return None


def explain(err: Exception, command: str, schema: type | None = None) -> str:
    """One line for an error Hydra raised while composing the config (or a sweep's last word)."""
    cause = err.__cause__
    if isinstance(err, MissingConfigException) and "/" in (err.missing_cfg_file or ""):
        group, option = err.missing_cfg_file.rsplit("/", 1)
        options = ", ".join(err.options or [])
        return f"error: {group}={option}: no such option; use one of {options}"
    if isinstance(err, OverrideParseException):
        return (
            f"error: {err.override}: {err.message.splitlines()[0]} (Hydra's override syntax: "
            "key=value, key=[a,b], group=option)"
        )
    if isinstance(cause, (ConfigKeyError, ConfigAttributeError)) and cause.full_key:
        return not_a_setting(cause.full_key, command, schema)
    message = first_line(err)
    if message.startswith("Unknown plugin class"):
        plugin = message.split(":", 1)[1].strip()
        return (
            f"error: Hydra finds no {plugin}: install it (hydra-submitit-launcher, "
            "hydra-joblib-launcher), or reinstall mlp_lab (pip install -e .)"
        )
    if message.startswith(("error:", "stopped:")):  # a sweep's failed job, already one line
        return message
    if message.startswith("Error merging override ") and cause is not None:
        override = message.removeprefix("Error merging override ")
        if not_a_list(first_line(cause)):
            key, value = override.split("=", 1)
            return f"error: {override}: use a list: {key}=[{value}]"
        return f"error: {override}: {first_line(cause)}"
    detail = f": {first_line(cause)}" if cause is not None else ""
    return f"error: {message}{detail}"


def one_line_errors(command_name: str, schema: type | None = None) -> Callable:
    """Make composition errors of `python -m command_name` end in one line."""

    def wrap(main: Callable) -> Callable:
        @functools.wraps(main)
        def command(*args, **kwargs):
            # Hydra raises, rather than printing its own report, when this is set.
            previous = os.environ.get("HYDRA_FULL_ERROR")
            os.environ["HYDRA_FULL_ERROR"] = "1"
            added = schema and added_key_that_is_no_setting(sys.argv[1:], command_name, schema)
            if added:
                raise SystemExit(added)
            try:
                return main(*args, **kwargs)
            except (CompactHydraException, OmegaConfBaseException) as err:
                raise SystemExit(explain(err, command_name, schema)) from None
            except RuntimeError as err:  # Hydra's, when a launcher or sweeper is not installed
                if not str(err).startswith("Unknown plugin class"):
                    raise
                raise SystemExit(explain(err, command_name, schema)) from None
            except AssertionError:  # OmegaConf's, when an override reaches into a null section
                off = schema and setting_in_a_section_that_is_off(sys.argv[1:], schema)
                if not off:
                    raise
                raise SystemExit(off) from None
            finally:
                if previous is None:
                    os.environ.pop("HYDRA_FULL_ERROR", None)
                else:
                    os.environ["HYDRA_FULL_ERROR"] = previous

        return command

    return wrap
