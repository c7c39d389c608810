"""The layers meet only at declared seams (flinknet.interfaces), and nothing reaches past them.

These tests read the package's source (ast) and its classes (inspect); each fails with the
places that break the rule.
"""

from __future__ import annotations

import ast
import inspect
import pathlib
import typing

import pytest

import flinknet
from flinknet import interfaces
from flinknet.consumer import LocalInputChannel
from flinknet.consumer.remote import RemoteInputChannel
from flinknet.partition import BoundedBlockingSubpartitionReader, PipelinedSubpartitionView
from flinknet.transport.client import ClientConnection

PACKAGE = pathlib.Path(flinknet.__file__).resolve().parent
# stdlib underscore names the library may use
ALLOWED_PRIVATE = {"_exit", "_getframe"}


def _library_modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent)
        if rel.parts[1] == "tools":
            continue
        yield rel, ast.parse(path.read_text(), str(path))


def _names_defined(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name) and target.id == "__slots__" and \
                        isinstance(node.value, (ast.Tuple, ast.List)):
                    names.update(e.value for e in node.value.elts if isinstance(e, ast.Constant))
    return names


def test_no_module_touches_another_modules_underscore_names():
    """``obj._name`` is allowed on ``self``/``cls``/``super()`` and for names the module itself
    defines (its own classes' internals); anything else reaches into another module."""
    offences = []
    for rel, tree in _library_modules():
        own = _names_defined(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") \
                    and not node.attr.startswith("__") and node.attr not in ALLOWED_PRIVATE:
                value = node.value
                if isinstance(value, ast.Name) and value.id in ("self", "cls"):
                    continue
                if isinstance(value, ast.Call) and getattr(value.func, "id", None) == "super":
                    continue
                if node.attr in own:
                    continue
                offences.append(f"{rel}:{node.lineno}: .{node.attr}")
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("flinknet"):
                for alias in node.names:
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        offences.append(f"{rel}:{node.lineno}: from {node.module} import {alias.name}")
    assert not offences, "private names used across modules:\n" + "\n".join(offences)


def test_wire_frames_are_encoded_only_by_the_transport():
    offences = []
    for rel, tree in _library_modules():
        if rel.parts[1] in ("transport", "_core"):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "flinknet._core.protocol":
                offences.append(f"{rel}:{node.lineno}: imports flinknet._core.protocol")
            elif isinstance(node, ast.ImportFrom) and node.module == "flinknet._core" and \
                    any(a.name == "protocol" for a in node.names):
                offences.append(f"{rel}:{node.lineno}: imports flinknet._core.protocol")
            elif isinstance(node, ast.Attribute) and node.attr.startswith("encode_"):
                offences.append(f"{rel}:{node.lineno}: calls {node.attr}")
    assert not offences, "frames encoded outside flinknet.transport:\n" + "\n".join(offences)


def test_one_availability_helper():
    """Availability futures come from the core's AvailabilityHelper; no second implementation."""
    offences = []
    for rel, tree in _library_modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and "Availability" in node.name \
                    and node.name != "AvailabilityWithBacklog" and not node.name.endswith("Listener"):
                offences.append(f"{rel}:{node.lineno}: class {node.name}")
    assert not offences, "\n".join(offences)


def _protocol_members(protocol) -> dict[str, object]:
    members = {}
    for klass in reversed(protocol.__mro__):
        if klass in (object, typing.Protocol, typing.Generic):
            continue
        for name, value in vars(klass).items():
            if not name.startswith("_"):
                members[name] = value
    return members


IMPLEMENTATIONS = [
    (interfaces.ResultSubpartitionView, PipelinedSubpartitionView),
    (interfaces.ResultSubpartitionView, BoundedBlockingSubpartitionReader),
    (interfaces.BufferAvailabilityListener, LocalInputChannel),
    (interfaces.CreditBasedInputChannel, RemoteInputChannel),
    (interfaces.PartitionRequestClient, ClientConnection),
]


@pytest.mark.parametrize("protocol, cls", IMPLEMENTATIONS,
                         ids=[f"{c.__name__}-is-{p.__name__}" for p, c in IMPLEMENTATIONS])
def test_implementations_match_their_declared_seam(protocol, cls):
    """Every member of the protocol exists on the class, as the same kind (property or
    method), and methods take the same parameters."""
    problems = []
    for name, declared in _protocol_members(protocol).items():
        if not hasattr(cls, name) and name not in _instance_attributes(cls):
            problems.append(f"{name}: missing")
            continue
        actual = getattr(cls, name, None)
        if isinstance(declared, property):
            if callable(actual) and not isinstance(actual, property):
                problems.append(f"{name}: a method, the seam declares a property")
            continue
        if not callable(actual):
            problems.append(f"{name}: not a method")
            continue
        want = list(inspect.signature(declared).parameters)
        got = list(inspect.signature(actual).parameters)
        if want != got:
            problems.append(f"{name}{tuple(got)} != declared {tuple(want)}")
    assert not problems, f"{cls.__name__} vs {protocol.__name__}:\n" + "\n".join(problems)


def _instance_attributes(cls) -> set[str]:
    """Attributes assigned to ``self`` in the class's methods (identifying fields)."""
    names = set()
    for klass in cls.__mro__:
        if klass is object:
            continue
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        import textwrap

        for node in ast.walk(ast.parse(textwrap.dedent(source))):
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and \
                    isinstance(node.value, ast.Name) and node.value.id == "self":
                names.add(node.attr)
    return names


def test_one_buffer_type_from_subpartition_to_gate():
    """Views and channels hand out the same BufferAndBacklog (no re-wrapping on the way)."""
    for cls in (PipelinedSubpartitionView, BoundedBlockingSubpartitionReader, LocalInputChannel,
                RemoteInputChannel):
        hints = typing.get_type_hints(cls.get_next_buffer, vars(interfaces))
        assert hints["return"] == interfaces.BufferAndBacklog | None, cls
