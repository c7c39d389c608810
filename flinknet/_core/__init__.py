"""flinknet's compiled core. There is no pure-Python fallback: import fails if it is not built."""

try:
    from flinknet._core import memory as _memory  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised by hand on an unbuilt tree
    raise ImportError(
        "flinknet's compiled core (flinknet._core) is not built or could not be loaded "
        f"({exc}). Install the package so it compiles, e.g. `pip install -e .` in the source "
        "tree (FLINKNET_DEBUG=1 for a debug build)."
    ) from exc
