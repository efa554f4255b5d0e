"""Backend selection shared by the custom operators.

Each operator has an ordered list of backends. ``use_backend`` (a context manager) or the
environment variable ``HRSAM_<OP>_BACKEND`` forces one; otherwise the first backend that supports
the inputs runs. A forced backend that cannot run the inputs falls back to the automatic choice and
says so once, so a user never gets a silently different computation without a log line.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

logger = logging.getLogger("hrsam.ops")

_overrides = threading.local()
_warned: set[tuple[str, str]] = set()


@dataclass(frozen=True)
class Backend:
    """One implementation of an operator.

    ``supports`` answers, for concrete inputs, None when the backend can run them or a short
    reason when it cannot (shown in the fallback log line).
    """

    name: str
    supports: Callable[..., str | None]
    run: Callable[..., object]


def forced_backend(op: str) -> str | None:
    """The backend ``use_backend`` or ``HRSAM_<OP>_BACKEND`` forces for ``op``, or None."""
    stack = getattr(_overrides, "stack", {})
    if op in stack:
        return stack[op]
    return os.environ.get(f"HRSAM_{op.upper()}_BACKEND") or None


@contextlib.contextmanager
def use_backend(op: str, name: str | None) -> Iterator[None]:
    """Force backend ``name`` for operator ``op`` inside the block (None restores automatic)."""
    stack = dict(getattr(_overrides, "stack", {}))
    previous = stack.get(op)
    if name is None:
        stack.pop(op, None)
    else:
        stack[op] = name
    _overrides.stack = stack
    try:
        yield
    finally:
        restored = dict(_overrides.stack)
        if previous is None:
            restored.pop(op, None)
        else:
            restored[op] = previous
        _overrides.stack = restored


def log_once(op: str, message: str, level: int = logging.WARNING) -> None:
    """Log ``message`` once per process and operator (fallbacks must be visible, not noisy)."""
    key = (op, message)
    if key not in _warned:
        _warned.add(key)
        logger.log(level, "hrsam::%s: %s", op, message)


def choose(op: str, backends: list[Backend], *args: object) -> Backend:
    """Pick the backend for these inputs: the forced one if it can run them, else the first that can."""
    forced = forced_backend(op)
    if forced is not None:
        names = [b.name for b in backends]
        if forced not in names:
            raise ValueError(f"hrsam::{op}: unknown backend {forced!r}; known: {names}")
        backend = backends[names.index(forced)]
        reason = backend.supports(*args)
        if reason is None:
            return backend
        log_once(op, f"backend {forced!r} cannot run these inputs ({reason}); choosing automatically")
    skipped = []
    for backend in backends:
        reason = backend.supports(*args)
        if reason is None:
            if skipped:
                log_once(op, f"using backend {backend.name!r} ({'; '.join(skipped)})", logging.INFO)
            return backend
        skipped.append(f"{backend.name}: {reason}")
    raise RuntimeError(f"hrsam::{op}: no backend can run these inputs ({'; '.join(skipped)})")


_registry: dict[str, list[Backend]] = {}


def register(op: str, backends: list[Backend]) -> None:
    """Record an operator's backends so ``available_backends`` can list them."""
    _registry[op] = backends


def available_backends(op: str, *args: object) -> list[str]:
    """Names of the backends of ``op``; with inputs given, only those that can run them."""
    backends = _registry[op]
    if not args:
        return [b.name for b in backends]
    return [b.name for b in backends if b.supports(*args) is None]
