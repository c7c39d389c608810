"""One naming rule, everywhere: state is a property; a method is an action, Flink's getX with
arguments, or an answer that is a new object each call (README, "Names").

A zero-argument method whose name reads as state (``get_x()``, ``is_x()``, ``has_x()``, ...) is
allowed only when it is listed here with the reason it is a method.
"""

from __future__ import annotations

import ast
import inspect
import pathlib
import re

import flinknet
from flinknet import core

PACKAGE = pathlib.Path(flinknet.__file__).resolve().parent
STATE_PREFIXES = ("get_", "is_", "has_", "should_", "num_", "number_of_")

# name -> why it is a method
METHODS = {
    "get_next_buffer": "an action: takes the next buffer out of the queue",
    "get_next_record": "an action: consumes the next record",
    "get_next_record_view": "an action: consumes the next record",
    "get_available_future": "a future (completed on a transition)",
    "get_priority_event_available_future": "a future",
    "get_all_data_processed_future": "a future",
    "get_unreleased_partitions": "a snapshot (a new list)",
    "get_statistics": "a snapshot of the histogram's window",
    "get_nio_buffer_readable": "a new memoryview each call (Flink's getNioBufferReadable)",
    "get_unconsumed_bytes": "a copy of the bytes not yet consumed",
    "get_future": "a future, made when asked (AvailabilityHelper)",
    "get_unavailable_to_reset_available": "an action: marks available (Flink's name)",
}


def test_python_layer_state_is_a_property():
    offences = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent)
        if rel.parts[1] == "tools":
            continue
        for cls in ast.walk(ast.parse(path.read_text())):
            if not isinstance(cls, ast.ClassDef):
                continue
            for fn in cls.body:
                if not isinstance(fn, ast.FunctionDef) or fn.name.startswith("_"):
                    continue
                decorators = {getattr(d, "id", getattr(d, "attr", None)) for d in fn.decorator_list}
                if "property" in decorators or "staticmethod" in decorators or "classmethod" in decorators:
                    continue
                positional = [a.arg for a in fn.args.args]
                if positional == ["self"] and not fn.args.kwonlyargs and not fn.args.vararg \
                        and fn.name.startswith(STATE_PREFIXES) and fn.name not in METHODS:
                    offences.append(f"{rel}:{fn.lineno}: {cls.name}.{fn.name}()")
    assert not offences, "state read through a method (make it a property):\n" + "\n".join(offences)


def test_compiled_core_state_is_a_property():
    offences = []
    for name in core.__all__:
        obj = getattr(core, name)
        if not inspect.isclass(obj):
            continue
        for attr, value in vars(obj).items():
            if attr.startswith("_") or not attr.startswith(STATE_PREFIXES) or attr in METHODS:
                continue
            if isinstance(value, property) or type(value).__name__ == "getset_descriptor":
                continue
            if callable(value):
                try:
                    params = [p for p in inspect.signature(value).parameters if p != "self"]
                except (TypeError, ValueError):
                    params = []
                if not params:
                    offences.append(f"{name}.{attr}()")
    assert not offences, "state read through a method in the core:\n" + "\n".join(offences)


def test_no_camel_case_public_names():
    """Flink's camelCase names are mapped to snake_case, never kept (the map is in docstrings)."""
    camel = re.compile(r"^[a-z]+[A-Z]")
    offences = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and camel.match(node.name):
                offences.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {node.name}")
    assert not offences, "\n".join(offences)
