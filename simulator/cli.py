"""Shared command-line behaviour: every way a command can fail ends as one line and an exit code.

- exit 2: a bad config, override or input (hydra's own multi-line errors included), one line
  `error: <key>=<value> ...: <what to change>`;
- exit 3: a run whose outputs failed the conservation check;
- exit 130: Ctrl-C, in any phase, with one line `interrupted`.

Entry points declare themselves with `@command("<config name>")` instead of `@hydra.main`, and end
with `run_command(main)`. Set HYDRA_FULL_ERROR=1 to see hydra's full traceback instead.
"""
from __future__ import annotations

import functools
import os
import sys
from typing import Any, Callable, Iterable

import hydra
from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from .core.block_manager import KVCacheTooSmallError
from .core.metrics import ConservationError
from .core.paths import REPO_ROOT

USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, PermissionError,
               KVCacheTooSmallError)
CONF_DIR = str(REPO_ROOT / "conf")
EXIT_USER_ERROR, EXIT_CONSERVATION, EXIT_INTERRUPTED = 2, 3, 130


def to_dict(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as plain containers; a key that cannot resolve is a one-line error."""
    try:
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except OmegaConfBaseException as exc:
        key = _first_unresolvable(cfg, "")
        raise ValueError(f"{key}: {_first_line(str(exc))}" if key else _omegaconf_line(exc)) from None


def _first_unresolvable(node: DictConfig | ListConfig, prefix: str) -> str | None:
    keys = node.keys() if isinstance(node, DictConfig) else range(len(node))
    for key in keys:
        path = f"{prefix}.{key}" if prefix else str(key)
        try:
            value = node[key]  # resolves an interpolation
        except OmegaConfBaseException:
            return path
        if isinstance(value, (DictConfig, ListConfig)):
            found = _first_unresolvable(value, path)
            if found:
                return found
    return None


def command(config_name: str) -> Callable[[Callable[[DictConfig], Any]], Callable[[], Any]]:
    """`@hydra.main` on conf/<config_name>.yaml, with hydra's errors and the task's raised rather
    than printed, so that `run_command` can turn each into one line."""
    def wrap(task: Callable[[DictConfig], Any]) -> Callable[[], Any]:
        failures: list[Exception] = []
        started: list[bool] = []

        def single_run_task(cfg: DictConfig) -> Any:
            # hydra prints an extra "Error executing job" line for a job that raised: in a single
            # run keep the exception here and raise it once hydra is done. A multirun job runs
            # elsewhere (a Ray worker), so its exception travels back through hydra.
            from hydra.core.hydra_config import HydraConfig
            from hydra.types import RunMode

            started.append(True)
            if HydraConfig.get().mode == RunMode.MULTIRUN:
                return task(cfg)
            try:
                return task(cfg)
            except Exception as exc:
                failures.append(exc)
                return None

        hydra_main = hydra.main(config_path=CONF_DIR, config_name=config_name,
                                version_base="1.3")(functools.wraps(task)(single_run_task))

        @functools.wraps(task)
        def main() -> Any:
            failures.clear()
            started.clear()
            previous = os.environ.get("HYDRA_FULL_ERROR")
            user_wants_trace = previous == "1"
            os.environ["HYDRA_FULL_ERROR"] = "1"  # hydra then raises instead of printing and exiting
            try:
                result = hydra_main()
            except (HydraException, OmegaConfBaseException) as exc:
                if user_wants_trace:
                    raise
                raise ValueError(hydra_error_line(exc, config_name)) from None
            except OSError as exc:
                if started or user_wants_trace or exc.filename is None:
                    raise
                # before the task ran, an OSError is hydra failing to create its run directory
                key = "hydra.sweep.dir" if {"-m", "--multirun"} & set(sys.argv) else "hydra.run.dir"
                raise ValueError(f"{key}: cannot create {exc.filename} ({exc.strerror}); run "
                                 f"from a writable directory or set {key}=<dir>") from None
            finally:
                if previous is None:
                    os.environ.pop("HYDRA_FULL_ERROR", None)
                else:
                    os.environ["HYDRA_FULL_ERROR"] = previous
            if failures:
                raise failures[0]
            return result
        return main
    return wrap


def run_command(main: Callable[[], Any]) -> None:
    """Run an entry point; user errors, a failed conservation check and Ctrl-C end as one line."""
    try:
        main()
    except KeyboardInterrupt:
        _exit("interrupted", EXIT_INTERRUPTED)
    except USER_ERRORS as exc:
        _exit(f"error: {exc}", EXIT_USER_ERROR)
    except ConservationError as exc:
        _exit(f"error: {exc} -- the outputs of this run are incomplete", EXIT_CONSERVATION)


def _exit(line: str, code: int) -> None:
    sys.stdout.flush()
    print(line, file=sys.stderr, flush=True)
    sys.exit(code)


def hydra_error_line(exc: BaseException, config_name: str) -> str:
    """One line for hydra's multi-line composition and override errors."""
    if isinstance(exc, MissingConfigException) and exc.options and exc.missing_cfg_file:
        group, _, name = exc.missing_cfg_file.rpartition("/")
        return f"{group}={name}: no such config; choose one of {', '.join(sorted(exc.options))}"
    if isinstance(exc, OverrideParseException):
        return f"cannot parse an override: {_first_line(str(exc))}; write key=value, a list as 'key=[a,b]'"
    cause = exc.__cause__
    if isinstance(cause, (ConfigAttributeError, ConfigKeyError)) and getattr(cause, "full_key", None):
        key = cause.full_key
        return f"{key}: unknown config key{_known_keys_hint(config_name, key)}; check its spelling"
    if isinstance(exc, OmegaConfBaseException):
        interpolations = [arg for arg in sys.argv[1:] if "${" in arg]
        if not getattr(exc, "full_key", None) and interpolations:  # hydra resolving an override
            return f"{interpolations[0]}: {_first_line(str(exc))}"
        return _omegaconf_line(exc)
    return " ".join(line.strip() for line in str(exc).splitlines() if line.strip())


def _known_keys_hint(config_name: str, key: str) -> str:
    """"; known keys under engine: a, b", read from the config composed with no overrides."""
    from hydra import compose, initialize_config_dir

    parent = key.rpartition(".")[0]
    try:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            node = compose(config_name=config_name)
        node = OmegaConf.select(node, parent) if parent else node
    except Exception:  # the hint is a courtesy: it must never hide the error itself
        return ""
    return _keys_hint(node, parent, exclude=None)


def _keys_hint(node: Any, parent: str, exclude: str | None) -> str:
    if not isinstance(node, DictConfig):
        return ""
    keys = sorted(str(k) for k in node.keys() if str(k) not in ("hydra", exclude))
    return f"; known keys{' under ' + parent if parent else ''}: {', '.join(keys)}" if keys else ""


def _omegaconf_line(exc: OmegaConfBaseException) -> str:
    key = getattr(exc, "full_key", None)
    message = _first_line(str(exc))
    return f"{key}: {message}" if key else message


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else text


def added_keys(cfg: DictConfig, overrides: Iterable[str], config_name: str) -> list[str]:
    """Keys that exist only because an override added them (`+key=value`, `++key=value`): no config
    file declares them, so nothing reads them and a typo would pass silently."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if isinstance(overrides, ListConfig):  # hydra's record of them: read as typed, unresolved
        overrides = OmegaConf.to_container(overrides, resolve=False)  # type: ignore[assignment]
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    adds = [o for o in parsed if o.is_add() or o.is_force_add()]
    if not adds:
        return []
    base_overrides = [o.input_line for o in parsed if not (o.is_add() or o.is_force_add())]
    base = hydra.compose(config_name=config_name, overrides=base_overrides)
    return [o.key_or_group for o in adds
            if OmegaConf.select(base, o.key_or_group, default=_ABSENT, throw_on_resolution_failure=False) is _ABSENT]


_ABSENT = object()


def reject_added_keys(cfg: DictConfig, config_name: str, overrides: Iterable[str]) -> None:
    """One line for the first key an override added (`+key=...`) that no config declares."""
    for key in added_keys(cfg, overrides, config_name):
        parent, _, leaf = key.rpartition(".")
        hint = _keys_hint(OmegaConf.select(cfg, parent) if parent else cfg, parent, exclude=leaf)
        raise ValueError(f"+{key}: no config declares this key, so nothing would read it{hint}; "
                         "drop it or fix its spelling")
