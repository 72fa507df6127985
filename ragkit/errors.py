"""Every exception ragkit raises on purpose, in one place.

The tree::

    RagkitError                      base: catch this to catch everything ragkit raises
    ├── UserError                    a mistake the user can fix; the CLI prints it and exits 2
    │   ├── ConfigError              a pipeline file or Python wiring is wrong (carries file:line:col)
    │   ├── InputError               a run-time input is unusable (empty question, bad dataset row)
    │   └── MissingDependencyError   an optional package is not installed (says which pip line fixes it)
    ├── PipelineError                the pipeline could not be built or run
    │   ├── ConnectionMismatchError  two stages joined by mismatched types or unknown sockets
    │   ├── CycleError               the stage graph is not acyclic
    │   └── StageFailedError         a stage raised while running (wraps the cause, names the stage)
    ├── ModelError                   a model could not be found, converted, loaded or called
    │   └── ModelUnavailableError    a remote model server cannot be reached or is overloaded
    ├── StoreError                   a graph or vector store failed
    │   ├── StoreUnavailableError    cannot connect / the store is down
    │   └── QueryTimeoutError        a query ran past its time-out
    └── QueryError                   a generated query is unusable (the repair loop reads these)
        ├── QueryParseError          it does not parse
        ├── SchemaViolationError     it names classes, properties, labels or relationships that do not exist
        └── ReadOnlyViolationError   it would write, load, or call a mutating procedure

Every message says what went wrong and what to do about it.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "RagkitError",
    "UserError",
    "ConfigError",
    "ConfigIssue",
    "InputError",
    "MissingDependencyError",
    "PipelineError",
    "ConnectionMismatchError",
    "CycleError",
    "StageFailedError",
    "ModelError",
    "ModelUnavailableError",
    "StoreError",
    "StoreUnavailableError",
    "QueryTimeoutError",
    "QueryError",
    "QueryParseError",
    "SchemaViolationError",
    "ReadOnlyViolationError",
]


class RagkitError(Exception):
    """Base class of every error ragkit raises on purpose."""


class UserError(RagkitError):
    """A mistake the user can fix. The CLI prints the message (no traceback) and exits with code 2."""


@dataclass(frozen=True)
class ConfigIssue:
    """One problem in a pipeline file, located where it is.

    Attributes:
        message: what is wrong and, in parentheses, how to fix it.
        file: the file, or ``"<python>"`` for pipelines wired in Python.
        line: 1-based line, 0 when unknown.
        column: 1-based column, 0 when unknown.
    """

    message: str
    file: str = "<python>"
    line: int = 0
    column: int = 0

    def __str__(self) -> str:
        if self.line:
            return f"{self.file}:{self.line}:{self.column}: {self.message}"
        return f"{self.file}: {self.message}"


class ConfigError(UserError):
    """A pipeline is wired or configured wrongly. Holds one or more located issues."""

    def __init__(self, issues: ConfigIssue | list[ConfigIssue] | str) -> None:
        if isinstance(issues, str):
            issues = [ConfigIssue(issues)]
        elif isinstance(issues, ConfigIssue):
            issues = [issues]
        self.issues: list[ConfigIssue] = list(issues)
        super().__init__("\n".join(str(i) for i in self.issues))


class InputError(UserError):
    """A run-time input cannot be used as given."""


class MissingDependencyError(UserError, ImportError):
    """An optional dependency is missing; the message carries the ``pip install`` line that fixes it."""

    def __init__(self, package: str, extra: str, purpose: str) -> None:
        self.package = package
        self.extra = extra
        super().__init__(
            f"{purpose} needs the '{package}' package, which is not installed "
            f"(run: pip install 'ragkit[{extra}]', or pip install {package})"
        )


class PipelineError(RagkitError):
    """The pipeline could not be built or run."""


class ConnectionMismatchError(PipelineError, ConfigError):
    """Two stages are joined by mismatched types or by sockets that do not exist."""

    def __init__(self, message: str) -> None:
        ConfigError.__init__(self, message)


class CycleError(PipelineError, ConfigError):
    """The connections form a cycle; ragkit runs only acyclic pipelines (loops live inside a stage)."""

    def __init__(self, message: str) -> None:
        ConfigError.__init__(self, message)


class StageFailedError(PipelineError):
    """A stage raised while running. ``stage`` names it; ``__cause__`` is the original error."""

    def __init__(self, stage: str, cause: BaseException) -> None:
        self.stage = stage
        super().__init__(f"stage '{stage}' failed: {cause}")


class ModelError(RagkitError):
    """A model could not be found, converted, loaded or called."""


class ModelUnavailableError(ModelError):
    """A remote model server cannot be reached, or keeps answering that it is busy. Check that it is
    running and that the resource's ``base_url`` is right; the same call may work later."""


class StoreError(RagkitError):
    """A graph or vector store failed."""


class StoreUnavailableError(StoreError):
    """The store cannot be reached. Check that it is running and that the resource's address is right."""


class QueryTimeoutError(StoreError):
    """A query ran longer than its time-out and was abandoned."""


class QueryError(RagkitError):
    """A generated query cannot be run. Subclasses carry details a repair step can use."""

    def __init__(self, message: str, *, query: str = "", details: list[str] | None = None) -> None:
        self.query = query
        self.details = list(details or [])
        super().__init__(message)


class QueryParseError(QueryError):
    """The query does not parse."""


class SchemaViolationError(QueryError):
    """The query names terms that the graph's schema does not have; ``details`` lists them."""


class ReadOnlyViolationError(QueryError):
    """The query would modify the store, load data, or call a non-read-only procedure. It was not run."""
