"""gin plumbing: locate files, parse them strictly, turn gin's errors into one line, read the result back.

Top-level ``--gin`` files are looked up as given (relative to the working directory), then relative to
the repository root, then relative to ``gin/``. ``include`` statements inside them resolve relative to
``gin/`` only, so a config means the same thing from any working directory.

A gin ``import`` runs the imported module, and dynamic registration (``from __gin__ import
dynamic_registration``) lets a config call any function it can reach, so by default a config may import
only the project's own packages and may not enable dynamic registration; ``allow_imports`` lifts both.
"""
from __future__ import annotations

import contextlib
import difflib
import importlib.util  # noqa: F401  gin's include error path uses importlib.util without importing it
import inspect
import logging
import os
import pathlib
import re
from collections.abc import Iterable, Iterator, Sequence

import gin
import gin.config
import gin.config_parser

from infra.errors import HarnessError

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
GIN_DIR = REPO_ROOT / "gin"
PROJECT_PACKAGES = ("bench", "methods", "datasets", "infra")
_DYNAMIC_REGISTRATION = "__gin__.dynamic_registration"
# Components renamed since a release, so a config written for the old name is told the new one.
RENAMED = {"DetectionFinetune": "DetrDetection"}


class GinImportRefused(HarnessError):
    """A gin ``import`` statement the config may not run without ``--allow_gin_imports``."""


def resolve_gin_file(name: str) -> pathlib.Path:
    """The path of a top-level gin file named on the command line; HarnessError if there is none."""
    candidates = [pathlib.Path(name), REPO_ROOT / name, GIN_DIR / name]
    for path in candidates:
        if path.is_file():
            return path.resolve()
    raise HarnessError(f"gin file not found: {name} (looked in the working directory, {REPO_ROOT} and {GIN_DIR})")


@contextlib.contextmanager
def _includes_relative_to_gin_dir() -> Iterator[None]:
    # gin searches include paths in _LOCATION_PREFIXES, starting with '' (the working directory); the
    # public add_config_file_search_path can only append, so swap the list for the parse and restore it.
    prefixes = gin.config._LOCATION_PREFIXES
    saved = list(prefixes)
    prefixes[:] = [str(GIN_DIR)]
    try:
        yield
    finally:
        prefixes[:] = saved


def check_gin_import(statement: gin.config_parser.ImportStatement) -> None:
    """Refuse a gin import statement unless it imports one of the project's packages.

    Raises GinImportRefused; gin adds the file and line, ``describe_gin_error`` puts them in front.
    """
    hint = "pass --allow_gin_imports only if you trust every gin file and binding of the run"
    if statement.module == _DYNAMIC_REGISTRATION:
        raise GinImportRefused(f"{statement.format()!r} refused: dynamic registration lets a gin file call any "
                               f"Python function; {hint}")
    if statement.module.split(".")[0] not in PROJECT_PACKAGES:
        raise GinImportRefused(f"{statement.format()!r} refused: gin files may import only the project's packages "
                               f"({', '.join(PROJECT_PACKAGES)}), since an import runs the module's code; {hint}")


def _include_path(config_file: str) -> str:
    """The file gin reads for ``config_file`` (it tries its search prefixes in order), resolved."""
    prefixes = [""] if os.path.isabs(config_file) else gin.config._LOCATION_PREFIXES
    for prefix in prefixes:
        candidate = os.path.join(prefix, config_file)
        if os.path.isfile(candidate):
            return os.path.realpath(candidate)
    return config_file


@contextlib.contextmanager
def _include_cycles_refused() -> Iterator[None]:
    # gin's parse_config calls the module-level parse_config_file for every include statement: wrapping
    # it sees the chain of open files, so a cycle is one line instead of a RecursionError.
    original = gin.config.parse_config_file
    chain: list[str] = []

    def parse_config_file(config_file, *args, **kwargs):
        path = _include_path(config_file)
        if path in chain:
            cycle = " -> ".join(_short_path(p) for p in [*chain[chain.index(path):], path])
            raise HarnessError(f"gin include cycle: {cycle} (a file includes itself through the others)")
        chain.append(path)
        try:
            return original(config_file, *args, **kwargs)
        finally:
            chain.pop()

    gin.config.parse_config_file = parse_config_file
    try:
        yield
    finally:
        gin.config.parse_config_file = original


@contextlib.contextmanager
def _imports_checked(allow: bool) -> Iterator[None]:
    # Every import statement gin parses, in a file, in a file reached by include (each include is parsed in
    # its own ParseContext) or in a binding string, goes through ParseContext.process_import before gin
    # imports anything; checking there covers them all without re-implementing gin's parser or include search.
    original = gin.config.ParseContext.process_import

    def process_import(context, statement):
        if not allow:
            check_gin_import(statement)
        return original(context, statement)

    gin.config.ParseContext.process_import = process_import
    try:
        yield
    finally:
        gin.config.ParseContext.process_import = original


def parse_config(gin_files: Sequence[str], bindings: Sequence[str] = (),
                 allow_imports: bool = False) -> list[pathlib.Path]:
    """Parse gin files then bindings, in order, strictly (unknown names are errors); finalize the config.

    The caller imports the components first (``bench.registry``; ``bench.runner`` imports it), so a name is
    unknown only if it really does not exist. Raises HarnessError with a one-line message naming the file or
    binding, and the nearest valid name. A dict literal that gives a key twice is refused.
    Unless ``allow_imports``, gin ``import`` statements outside ``PROJECT_PACKAGES`` and dynamic registration
    are refused before they run (``check_gin_import``).
    """
    _require_components()
    paths = [resolve_gin_file(name) for name in gin_files]
    with _includes_relative_to_gin_dir(), _imports_checked(allow_imports), _include_cycles_refused(), \
            _duplicate_keys_refused(), _gin_logging_quiet():
        for name, path in zip(gin_files, paths):
            try:
                gin.config.parse_config_file(str(path))  # the wrapper _include_cycles_refused installs
            except Exception as e:  # gin raises ValueError, OSError, SyntaxError, TokenError...
                raise HarnessError(describe_gin_error(e, source=name)) from None
        for binding in bindings:
            try:
                gin.parse_config(binding)
            except Exception as e:
                raise HarnessError(describe_gin_error(e, source=f"--gin_binding {binding!r}")) from None
    try:
        gin.finalize()  # checks that every %gin.REQUIRED value was given
    except Exception as e:
        raise HarnessError(describe_gin_error(e, source=" ".join(gin_files))) from None
    return paths


def parse_config_text(text: str) -> None:
    """Parse a whole config as ``gin.config_str()`` wrote it (e.g. in a worker process) and finalize it;
    its components must be registered already, as for ``parse_config``."""
    _require_components()
    try:
        with _includes_relative_to_gin_dir(), _gin_logging_quiet():
            gin.parse_config(text)
        gin.finalize()
    except Exception as e:
        raise HarnessError(describe_gin_error(e, source="config")) from None


def _require_components() -> None:
    """A programming error, not the user's: the components were never imported, so every name would be
    unknown."""
    if not any(selector.endswith("Experiment") for selector, _ in gin.config._REGISTRY.items()):
        raise RuntimeError("parse the config after importing bench.runner (it registers the Experiment and, "
                           "through bench.registry, every component)")


_LOCATION = re.compile(r'In file "([^"]+)", line (\d+)')
_NO_CONFIGURABLE = re.compile(r"No configurable matching (?:reference )?'@?([\w./]+?)(?:\(\))?'")
_NO_PARAMETER = re.compile(r"Configurable '([\w./]+)' doesn't have a parameter named '(\w+)'")
_MISSING_FILE = re.compile(r"Unable to open file: (\S+?)\.? Searched")
_IN_CALL = re.compile(r"In call to configurable '([\w.]+)' \(.*?\)(?: in scope '([\w/.]+)')?")
_PARAMETER_FIRST = re.compile(r"(\w+)\s*[:=]")


def describe_gin_error(error: BaseException, source: str) -> str:
    """A one-line description of a gin parse or call error, with the nearest valid name where possible."""
    text = str(error).strip()
    first = text.splitlines()[0].strip() if text else type(error).__name__
    where = source
    if match := _LOCATION.search(text):
        file, line = match.groups()
        where = f"{_short_path(file)}:{line}"
    if match := _MISSING_FILE.search(text):
        return f"{where}: gin include not found: {match.group(1)} (includes resolve relative to {GIN_DIR})"
    if match := _NO_CONFIGURABLE.search(first):
        name = match.group(1)
        if name.split("/")[-1].split(".")[-1] in RENAMED:
            old = name.split("/")[-1].split(".")[-1]
            return f"{where}: {first} ({old} is called {RENAMED[old]} now)"
        return f"{where}: {first}{did_you_mean(name, registered_names())}"
    if match := _NO_PARAMETER.search(first):
        configurable, parameter = match.groups()
        return f"{where}: {first}{did_you_mean(parameter, parameter_names(configurable))}"
    if isinstance(error, SyntaxError) or type(error).__name__ == "TokenError":
        line, reason = _syntax_problem(error)
        if line is not None and not where.startswith("--gin_binding") and ":" not in where.rsplit("/", 1)[-1]:
            where = f"{where}:{line}"
        return f"{where}: cannot parse gin statement: {reason}"
    if match := _IN_CALL.search(text):  # raised while gin built a component: name it and its parameter
        return f"{where}: {_name_the_component(first, *match.groups())}"
    return f"{where}: {first}"


def _syntax_problem(error: BaseException) -> tuple[int | None, str]:
    """(line, reason) of a gin SyntaxError or a tokenize error, without Python's internals in the reason."""
    if type(error).__name__ == "TokenError":  # ('EOF in multi-line statement', (line, column))
        line = error.args[1][0] if len(error.args) > 1 and error.args[1] else None
        return line, "the text ends inside a statement (a bracket or quote is never closed, or a line ends with ',')"
    message = str(getattr(error, "msg", error))
    if token := re.search(r"Failed to parse token '(.*)'", message):
        reason = (f"{token.group(1)!r} is not a value (strings need quotes, a component is @Name or @Name(), a "
                  "macro %NAME)")
    else:
        reason = re.sub(r"\s*<[^>]* object at 0x[0-9a-f]+>", "", message.strip().splitlines()[0]).rstrip(" :")
    return getattr(error, "lineno", None), reason


@contextlib.contextmanager
def _gin_logging_quiet() -> Iterator[None]:
    # gin logs a missing include as an ERROR line of its own before raising; the raised error is reported.
    previous = logging.root.manager.disable
    logging.disable(logging.ERROR)
    try:
        yield
    finally:
        logging.disable(previous)


@contextlib.contextmanager
def _duplicate_keys_refused() -> Iterator[None]:
    # gin builds a dict literal from its (key, value) items with dict(), which keeps the last of two equal
    # keys: ``{'none': @a, 'none': @b}`` would silently be one row. Each dict's keys are collected as they
    # are parsed, and a repeated one is a syntax error at that dict.
    parser = gin.config_parser.ConfigParser
    container, item = parser._maybe_parse_container, parser._parse_dict_item

    def parse_container(self):
        if self._current_token.string != "{":
            return container(self)
        location = self._current_location()
        stack = self.__dict__.setdefault("_sam3d_dict_keys", [])
        stack.append([])
        try:
            parsed = container(self)
        finally:
            keys = stack.pop()
        repeated = sorted({repr(k) for k in keys if keys.count(k) > 1})
        if repeated:
            self._raise_syntax_error(f"key {', '.join(repeated)} appears twice in a dict; each key must be "
                                     "given once (the second would silently replace the first)", location)
        return parsed

    def parse_item(self):
        key, value = item(self)
        self._sam3d_dict_keys[-1].append(key)
        return key, value

    parser._maybe_parse_container, parser._parse_dict_item = parse_container, parse_item
    try:
        yield
    finally:
        parser._maybe_parse_container, parser._parse_dict_item = container, item


def _name_the_component(message: str, configurable: str, scope: str | None) -> str:
    """``message`` (an error a component's constructor raised) with the component's name in front of the
    parameter it starts with, or after it; and the gin scope it was built in."""
    name = configurable.split(".")[-1]
    in_scope = f" (in gin scope {scope!r})" if scope else ""
    if message.startswith(f"{name}.") or message.startswith(f"{name}:"):
        return f"{message}{in_scope}"
    if (match := _PARAMETER_FIRST.match(message)) and match.group(1) in parameter_names(configurable):
        return f"{name}.{message}{in_scope}"
    return f"{message} (in {name}, gin scope {scope!r})" if scope else f"{message} (in {name})"


def _short_path(file: str) -> str:
    path = pathlib.Path(file)
    with contextlib.suppress(ValueError):
        return str(path.resolve().relative_to(REPO_ROOT))
    return file


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` naming the candidate closest to ``name``, or '' when none is close."""
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def registered_names() -> list[str]:
    """Every name a gin file may use for a registered component: short names and full selectors."""
    names = set()
    for selector, configurable in gin.config._REGISTRY.items():
        names.update((selector, configurable.name))
    return sorted(names)


def parameter_names(configurable_name: str) -> list[str]:
    """The keyword parameters of a registered component (empty if the name is unknown)."""
    try:
        target = gin.config._REGISTRY.get_match(configurable_name).wrapped
        signature = inspect.signature(target.__init__ if inspect.isclass(target) else target)
    except (ValueError, TypeError, AttributeError, KeyError):
        return []
    return [p for p in signature.parameters if p != "self"]


def config_bindings(config_text: str) -> dict[str, str]:
    """Map ``scope/Name.param`` to its value text for every binding in a gin config string.

    Used to log params to MLflow; multi-line values are joined and whitespace-collapsed.
    """
    bindings: dict[str, str] = {}
    key = None
    for raw in config_text.splitlines():
        line = raw.rstrip()
        if not line or line.lstrip().startswith("#"):
            continue
        if not raw[0].isspace() and " = " in line and not line.startswith(("import ", "include ")):
            key, value = line.split(" = ", 1)
            bindings[key.strip()] = value.strip()
        elif key is not None and raw[0].isspace():
            bindings[key] = f"{bindings[key]} {line.strip()}"
    return {k: re.sub(r"\s+", " ", v) for k, v in bindings.items()}
