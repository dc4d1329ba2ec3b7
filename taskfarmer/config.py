"""INI definitions of runners and tasklist handlers, turned into objects with checked, typed options.

A definition is an INI section; its class key (``Runner =`` or ``TaskList =``) names the class as
``module.Class``, a shipped short name, or an entry point name (no dot); every other key becomes a keyword argument.
Files are only parsed when looking a name up; only the class in use is imported; a broken file is reported
only when it could be the one defining the name asked for.
"""

from __future__ import annotations

import configparser
import importlib
import inspect
import io
import logging
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from taskfarmer.errors import ConfigError, UnknownDefinitionError

_LOGGER: Final = logging.getLogger(__name__)
_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off"})
BUILTIN: Final = "(built in)"


def home() -> Path:
    """:returns: the user's configuration directory: ``$PYTASKFARMER_HOME``, else ``~/.pytaskfarmer``"""
    return Path(os.environ.get("PYTASKFARMER_HOME") or Path("~/.pytaskfarmer").expanduser())


@dataclass(frozen=True)
class Kind:
    """What is being defined: runners or tasklist handlers."""

    noun: str  # "runner" / "tasklist handler"
    class_key: str  # "Runner" / "TaskList"
    entry_point_group: str
    shipped: dict[str, str]  # short name -> module.Class
    builtin: dict[str, str]  # definition name -> module.Class, always available


@dataclass(frozen=True)
class Definition:
    """One INI section (or a built-in definition): a name, a class and its options as written."""

    name: str
    kind: Kind
    class_name: str
    options: dict[str, str] = field(default_factory=dict)
    source: str = BUILTIN

    def where(self) -> str:
        """:returns: ``[name] in FILE``, for messages"""
        return f"[{self.name}] in {self.source}"


@dataclass
class Catalog:
    """Every definition found for one kind, and the files that could not be parsed."""

    kind: Kind
    definitions: dict[str, Definition] = field(default_factory=dict)
    broken: list[str] = field(default_factory=list)
    keyless: dict[str, str] = field(default_factory=dict)  # sections without the class key: section -> what they hold

    def get(self, name: str) -> Definition:
        """:returns: the definition called *name*
        :raises UnknownDefinitionError: listing the names that exist (and the files that could not be read)
        """
        if name in self.definitions:
            return self.definitions[name]
        if name in self.keyless:
            msg = (
                f"[{name}] {self.keyless[name]} has no '{self.kind.class_key} =' key, so it defines no"
                f" {self.kind.noun}: name its class with {self.kind.class_key} = (a misspelt key?)."
            )
            raise UnknownDefinitionError(msg)
        known = ", ".join(sorted(self.definitions))
        msg = f"Unknown {self.kind.noun} '{name}'. Defined: {known}."
        if self.broken:
            msg += f" Not readable, so not searched: {'; '.join(self.broken)}."
        raise UnknownDefinitionError(msg)


def load_catalog(kind: Kind, directories: list[Path]) -> Catalog:
    """Read every ``*.ini`` of *directories* (later files override earlier definitions of the same name)."""
    catalog = Catalog(kind)
    for name, class_name in kind.builtin.items():
        catalog.definitions[name] = Definition(name, kind, class_name)
    for directory in directories:
        for path in sorted(directory.glob("*.ini")):
            _read_file(catalog, path)
    return catalog


def _read_file(catalog: Catalog, path: Path) -> None:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # type: ignore[assignment, method-assign]  # keys are case-sensitive Python names
    try:
        with path.open(encoding="utf-8") as source:
            parser.read_file(source)
    except (configparser.Error, UnicodeDecodeError, OSError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        # Not a warning: it only matters if the name asked for is not found, and that error lists these files.
        _LOGGER.info("skipping %s: %s", path, reason)
        catalog.broken.append(f"{path} ({reason})")
        return
    for section in parser.sections():
        options = dict(parser[section])
        class_name = options.pop(catalog.kind.class_key, None)
        if class_name is None:
            # Another kind of definition (a tasklist handler in a runner file...), or a misspelt class key.
            catalog.keyless[section] = f"in {path} (keys: {', '.join(options) or 'none'})"
            continue
        if section in catalog.definitions and catalog.definitions[section].source != BUILTIN:
            _LOGGER.info(
                "%s [%s] of %s overrides %s", catalog.kind.noun, section, path, catalog.definitions[section].source
            )
        catalog.definitions[section] = Definition(section, catalog.kind, class_name.strip(), options, str(path))


def resolve_class(definition: Definition) -> type:
    """Import the class a definition names.

    :raises ConfigError: naming the file, the section and what is wrong
    """
    kind = definition.kind
    target = kind.shipped.get(definition.class_name) or _entry_point(kind, definition.class_name)
    target = target or definition.class_name
    module_name, _, class_name = target.rpartition(".")
    shipped = ", ".join(sorted(kind.shipped))
    if not module_name:
        msg = f"Cannot load {kind.noun} {definition.where()}: '{target}' is not module.Class. Shipped: {shipped}."
        raise ConfigError(msg)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        msg = f"Cannot load {kind.noun} {definition.where()}: module '{module_name}' cannot be imported ({exc})."
        raise ConfigError(msg + f" Shipped: {shipped}.") from exc
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type):
        msg = f"Cannot load {kind.noun} {definition.where()}: class '{target}' not found. Shipped: {shipped}."
        raise ConfigError(msg)
    return cls


def _entry_point(kind: Kind, name: str) -> str | None:
    if "." in name:
        return None  # a module.Class path: no need of the package metadata (a hundredth of a second at every start)
    import importlib.metadata  # noqa: PLC0415  # only for a name that is neither shipped nor a path

    for entry in importlib.metadata.entry_points(group=kind.entry_point_group):
        if entry.name == name:
            return entry.value.replace(":", ".")
    return None


def build(definition: Definition, *, base: type, extra: dict[str, Any] | None = None) -> Any:  # noqa: ANN401  # the class is the user's
    """Create the object a definition describes, with each option checked against the constructor.

    :param base: the class it must derive from
    :param extra: arguments the framework adds (already typed) when the constructor accepts them
    :raises ConfigError: unknown or missing option, wrong type, or a constructor that refuses its arguments
    """
    cls = resolve_class(definition)
    if not issubclass(cls, base):
        expected = f"{base.__module__}.{base.__qualname__}"
        found = f"{cls.__module__}.{cls.__qualname__}"
        msg = f"Cannot load {definition.kind.noun} {definition.where()}: {found} is not a {expected}."
        raise ConfigError(msg)
    parameters = _parameters(cls)
    kwargs = {key: _convert(definition, key, value, parameters) for key, value in definition.options.items()}
    # Only to a constructor that names the parameter: a **kwargs one would take it for an INI option.
    kwargs.update({key: value for key, value in (extra or {}).items() if key in parameters})
    _check_required(definition, cls, parameters, kwargs)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        msg = f"Cannot build {definition.kind.noun} {definition.where()}: {exc}"
        raise ConfigError(msg) from exc


def _parameters(cls: type) -> dict[str, inspect.Parameter]:
    return {
        name: parameter
        for name, parameter in inspect.signature(cls).parameters.items()
        if parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)
    }


def _takes_any_keyword(cls: type) -> bool:
    return any(p.kind is p.VAR_KEYWORD for p in inspect.signature(cls).parameters.values())


def _convert(definition: Definition, key: str, value: str, parameters: dict[str, inspect.Parameter]) -> object:
    parameter = parameters.get(key)
    if parameter is None:
        if _takes_any_keyword(resolve_class(definition)):
            return value
        valid = ", ".join(sorted(parameters)) or "none"
        msg = (
            f"{definition.kind.noun.capitalize()} {definition.where()}: unknown option '{key}'. Valid options: {valid}."
        )
        raise ConfigError(msg)
    annotation = str(parameter.annotation)
    try:
        return _typed(annotation, value, definition)
    except ValueError as exc:
        msg = f"{definition.kind.noun.capitalize()} {definition.where()}: option '{key}' = {value!r}: {exc}."
        raise ConfigError(msg) from exc


def _typed(annotation: str, value: str, definition: Definition) -> object:
    # Annotations are strings here (from __future__ import annotations): match them by name.
    if annotation.startswith("bool"):
        lowered = value.strip().lower()
        if lowered not in _TRUE | _FALSE:
            msg = "not a boolean (use true or false)"
            raise ValueError(msg)
        return lowered in _TRUE
    if annotation.startswith("int"):
        return _number(int, value, "not a whole number")
    if annotation.startswith("float"):
        return _number(float, value, "not a number")
    if annotation.startswith(("Mapping", "dict")):
        return parse_variables(value, relative_to=definition.source)
    if annotation.startswith("list"):
        return shlex.split(value)
    return value


def _number(kind: type[float], value: str, message: str) -> float:
    try:
        return kind(value.strip())
    except ValueError:
        raise ValueError(message) from None


def _check_required(
    definition: Definition, cls: type, parameters: dict[str, inspect.Parameter], kwargs: dict[str, Any]
) -> None:
    for name, parameter in parameters.items():
        if parameter.default is parameter.empty and name not in kwargs:
            what = f"{definition.kind.noun.capitalize()} {definition.where()}"
            msg = f"{what}: missing option '{name}' (required by {cls.__qualname__})."
            raise ConfigError(msg)


def parse_variables(value: str, *, relative_to: str = BUILTIN) -> dict[str, str]:
    """Parse ``variables``: ``KEY=VALUE`` lines (dotenv syntax), or the path of a ``.env`` file.

    :param relative_to: the INI file a relative path is relative to
    :raises ValueError: when the file does not exist
    """
    from dotenv import dotenv_values  # noqa: PLC0415  # only runners with variables need it

    text = value.strip()
    if "=" in text:
        parsed = dotenv_values(stream=io.StringIO(text), interpolate=True)
    else:
        path = Path(os.path.expandvars(text)).expanduser()
        if not path.is_absolute() and relative_to != BUILTIN:
            path = Path(relative_to).parent / path
        if not path.is_file():
            msg = f"no .env file {path} (give KEY=VALUE lines, or the path of an existing file)"
            raise ValueError(msg)
        parsed = dotenv_values(dotenv_path=path, interpolate=True)
    return {key: val or "" for key, val in parsed.items()}


def _kinds() -> tuple[Kind, Kind]:
    from taskfarmer import runners, tasklist  # noqa: PLC0415  # runners import psutil; keep `config` light

    return (
        Kind("runner", "Runner", "taskfarmer.runners", runners.SHIPPED, {"default": runners.SHIPPED["BasicRunner"]}),
        Kind(
            "tasklist handler",
            "TaskList",
            "taskfarmer.tasklists",
            tasklist.SHIPPED,
            {"default": tasklist.SHIPPED["TaskList"]},
        ),
    )


def runner_catalog() -> Catalog:
    """:returns: the runners of ``$PYTASKFARMER_HOME/runners.d/*.ini`` and the built-in ``default``"""
    return load_catalog(_kinds()[0], [home() / "runners.d"])


def tasklist_catalog() -> Catalog:
    """:returns: the tasklist handlers of ``$PYTASKFARMER_HOME/tasklists.d/*.ini``, ``./*.ini`` and ``default``"""
    return load_catalog(_kinds()[1], [home() / "tasklists.d", Path.cwd()])


def build_runner(definition: Definition, *, grace: float | None = None) -> tuple[Any, dict[str, str]]:
    """Create a runner; ``variables`` works for every runner, also those whose constructor does not take it.

    :param grace: the farmer's ``--grace``, for a runner whose definition sets no ``grace`` of its own
    :returns: the runner, and the variables the worker must put in the environment itself
    :raises ConfigError: as :func:`build`
    """
    from taskfarmer.runners import Runner  # noqa: PLC0415  # see _kinds

    options = dict(definition.options)
    variables: dict[str, str] = {}
    if "variables" in options and "variables" not in _parameters(resolve_class(definition)):
        try:
            variables = parse_variables(options.pop("variables"), relative_to=definition.source)
        except ValueError as exc:
            msg = f"Runner {definition.where()}: option 'variables': {exc}."
            raise ConfigError(msg) from exc
    runner = build(
        Definition(definition.name, definition.kind, definition.class_name, options, definition.source),
        base=Runner,
        extra={"name": definition.name, **({"grace": grace} if grace is not None and "grace" not in options else {})},
    )
    return runner, variables


def build_tasklist(definition: Definition) -> Any:  # noqa: ANN401  # a TaskList subclass
    """:returns: the tasklist handler a definition describes
    :raises ConfigError: as :func:`build`
    """
    from taskfarmer.tasklist import TaskList  # noqa: PLC0415  # see _kinds

    return build(definition, base=TaskList)
