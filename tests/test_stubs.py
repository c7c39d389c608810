"""The compiled core's stubs (flinknet/_core/*.pyi) tell the truth about the compiled modules.

``mypy.stubtest`` imports each compiled module and compares it with its stub: every name, each
function's parameters (positional-only, keyword names, defaults), properties against methods,
read-only against writable attributes, module constants. It runs against whichever build is
installed, so CI checks the release and the FLINKNET_DEBUG=1 build alike. ci/typecheck.sh runs
the same command; the allowlists and the mypy settings it uses are described in those files.
"""

import ast
import importlib
import importlib.util
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
CORE = ROOT / "flinknet" / "_core"
# Every compiled core module (each .pyx has its .pyi next to it).
CORE_MODULES = sorted(f"flinknet._core.{p.stem}" for p in CORE.glob("*.pyx"))

needs_mypy = pytest.mark.skipif(
    importlib.util.find_spec("mypy") is None,
    reason="mypy is not installed (it belongs to the `test` extra: pip install -e '.[test]')",
)


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, check=False)


def test_core_modules_found():
    assert "flinknet._core.memory" in CORE_MODULES and len(CORE_MODULES) >= 8, CORE_MODULES


@needs_mypy
@pytest.mark.slow
def test_stubtest_passes_on_the_compiled_core():
    allowlists = ["--allowlist", "ci/stubtest-allowlist.txt"]
    if sys.version_info < (3, 12):
        allowlists += ["--allowlist", "ci/stubtest-allowlist-py311.txt"]
    proc = _run("mypy.stubtest", *CORE_MODULES, "--mypy-config-file", "ci/stubtest-mypy.ini",
                *allowlists)
    assert proc.returncode == 0, (
        f"mypy.stubtest found stubs that do not match the compiled modules "
        f"(exit status {proc.returncode}):\n{proc.stdout}{proc.stderr}")


@needs_mypy
@pytest.mark.slow
def test_stubs_pass_mypy_strict():
    stubs = sorted(str(p.relative_to(ROOT)) for p in CORE.glob("*.pyi"))
    proc = _run("mypy", "--strict", "--follow-imports=silent", *stubs, "flinknet/_core/typedefs.py")
    assert proc.returncode == 0, (
        f"mypy --strict reports errors in the stubs (exit status {proc.returncode}):\n"
        f"{proc.stdout}{proc.stderr}")


# --- what stubtest cannot see: the constructors of extension types ---------------------------------
# An extension type's __init__ is a slot wrapper, "(self, /, *args, **kwargs)" to inspect, so
# stubtest accepts any stub __init__. Cython (embedsignature) writes the real signature as the
# first line of the class docstring: "NetworkBuffer(MemorySegment segment, ..., Py_ssize_t size=0)".
# (Classes built by __cinit__ alone, MemorySegment and NetworkBufferPool, have no such line.)


def _split_params(text):
    params, depth, current = [], 0, ""
    for ch in text:
        depth += ch in "([{"
        depth -= ch in ")]}"
        if ch == "," and depth == 0:
            params.append(current.strip())
            current = ""
        else:
            current += ch
    return [p for p in [*params, current.strip()] if p and p != "self"]


def _runtime_params(cls):
    """(kind, name, default source or None) of the signature Cython embedded, or None."""
    first_line = (cls.__doc__ or "").split("\n", 1)[0]
    match = re.fullmatch(rf"{cls.__name__}\((.*)\)", first_line)
    if match is None:
        return None
    out = []
    for param in _split_params(match.group(1)):
        param, _, default = (x.strip() for x in param.partition("="))
        param = param.removesuffix("not None").strip()   # "MemorySegment segment not None"
        kind = "**" if param.startswith("**") else "*" if param.startswith("*") else ""
        out.append((kind, param.split()[-1].lstrip("*"), default or None))
    return out


def _stub_params(func):
    args = func.args
    positional = (args.posonlyargs + args.args)[1:]
    defaults = [None] * (len(positional) - len(args.defaults)) + args.defaults
    out = [("", a.arg, d) for a, d in zip(positional, defaults)]
    out += [("*", args.vararg.arg, None)] if args.vararg else []
    out += [("", a.arg, d) for a, d in zip(args.kwonlyargs, args.kw_defaults)]
    out += [("**", args.kwarg.arg, None)] if args.kwarg else []
    return out, args


def _is_never(arg):
    return arg is not None and arg.annotation is not None and ast.unparse(arg.annotation) == "Never"


def _shape(params):
    return [(kind, name, default is not None) for kind, name, default in params]


def _constructor_cases():
    for module_name in CORE_MODULES:
        module = importlib.import_module(module_name)
        tree = ast.parse((CORE / f"{module_name.rsplit('.', 1)[1]}.pyi").read_text())
        stub_classes = {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}
        for name, cls in vars(module).items():
            if (isinstance(cls, type) and cls.__module__ == module_name and not name.startswith("_")
                    and _runtime_params(cls) is not None):
                yield pytest.param(cls, stub_classes.get(name), id=f"{module_name}.{name}")


@pytest.mark.parametrize("cls, stub_class", list(_constructor_cases()))
def test_extension_type_constructor_matches_its_stub(cls, stub_class):
    runtime = _runtime_params(cls)
    assert stub_class is not None, f"{cls.__name__} is not in the stub"
    inits = [f for f in stub_class.body if isinstance(f, ast.FunctionDef) and f.name in ("__init__", "__new__")]
    assert inits, f"the stub of {cls.__name__} declares no __init__ (runtime: {runtime})"
    stub, args = _stub_params(inits[0])
    if _is_never(args.vararg) and _is_never(args.kwarg) and not (args.posonlyargs + args.args)[1:]:
        # The stub's way of saying "no call is valid": the class raises TypeError whatever it
        # is given (Buffer, LocalBufferPool, PositionMarker: made by the core, not by users).
        return
    assert _shape(stub) == _shape(runtime), (
        f"{cls.__name__}: stub ({ast.unparse(inits[0].args)}) vs runtime {cls.__doc__.splitlines()[0]}")
    for (_, name, stub_default), (_, _, runtime_default) in zip(stub, runtime):
        try:
            expected = ast.literal_eval(runtime_default) if runtime_default is not None else None
        except ValueError:
            continue   # a name (DT_DATA_BUFFER, pickle.HIGHEST_PROTOCOL): not comparable here
        if stub_default is not None and not (isinstance(stub_default, ast.Constant) and stub_default.value is ...):
            assert ast.literal_eval(stub_default) == expected, (
                f"{cls.__name__}({name}=...): stub default {ast.unparse(stub_default)}, runtime {runtime_default}")
