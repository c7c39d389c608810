"""flinknet's exceptions: one hierarchy in flinknet.errors, re-exported under the old names;
configuration errors are FlinknetErrors that name the key (and the closest known key)."""

import importlib
import importlib.util
import pickle
import pkgutil

import pytest

import flinknet
from flinknet import errors
from flinknet.config import NetworkConfig, parse_duration, parse_memory_size
from flinknet.errors import ConfigurationError, FlinknetError, UnknownConfigurationKeyError

# Tool-internal modules may define their own exceptions (usage errors, child-process failures).
_EXCLUDED_PACKAGES = ("flinknet.tools",)
_EXCLUDED_PREFIXES = ("demo", "bench")
_EXCLUDED_NAMES = ("cli", "__main__")


# Modules that need an optional extra: walked only where the extra is installed.
_OPTIONAL = {"flinknet.graph.ray": "ray"}


def _excluded(name: str) -> bool:
    if any(name == p or name.startswith(p + ".") for p in _EXCLUDED_PACKAGES):
        return True
    last = name.rsplit(".", 1)[-1]
    return last in _EXCLUDED_NAMES or last.startswith(_EXCLUDED_PREFIXES)


def _library_modules():
    """Every module of the flinknet package except the tools, imported (packages recursed into
    only when not excluded, so that an excluded package is never imported)."""
    modules = [flinknet]
    todo = [flinknet]
    while todo:
        package = todo.pop()
        for info in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
            if _excluded(info.name):
                continue
            extra = _OPTIONAL.get(info.name)
            if extra is not None and importlib.util.find_spec(extra) is None:
                continue
            module = importlib.import_module(info.name)
            modules.append(module)
            if info.ispkg:
                todo.append(module)
    return modules


def _exception_classes():
    found = {}
    for module in _library_modules():
        for name, obj in vars(module).items():
            if (isinstance(obj, type) and issubclass(obj, BaseException)
                    and obj.__module__.startswith("flinknet")):
                found.setdefault(obj, []).append(f"{module.__name__}.{name}")
    return found


def test_the_walk_sees_the_library():
    names = {m.__name__ for m in _library_modules()}
    for expected in ("flinknet.errors", "flinknet.config", "flinknet.events", "flinknet.writer",
                     "flinknet._core.protocol", "flinknet.transport.client",
                     "flinknet.transport.handshake", "flinknet.consumer.remote",
                     "flinknet.partition.blocking"):
        assert expected in names
    assert not any(_excluded(n) for n in names)


def test_every_exception_class_is_defined_in_flinknet_errors():
    found = _exception_classes()
    assert FlinknetError in found and errors.CorruptFrameError in found
    elsewhere = {cls.__qualname__: (cls.__module__, where) for cls, where in found.items()
                 if cls.__module__ != "flinknet.errors"}
    assert not elsewhere, f"exception classes defined outside flinknet.errors: {elsewhere}"
    not_flinknet = [cls.__qualname__ for cls in found if not issubclass(cls, FlinknetError)]
    assert not not_flinknet, f"exception classes not deriving from FlinknetError: {not_flinknet}"


def test_errors_all_lists_every_class_and_the_docstring_tree_names_each():
    defined = {name for name, obj in vars(errors).items()
               if isinstance(obj, type) and issubclass(obj, BaseException)
               and obj.__module__ == "flinknet.errors"}
    assert set(errors.__all__) == defined
    for name in errors.__all__:
        assert name in errors.__doc__, name
    assert "\N{SECTION SIGN}" not in errors.__doc__   # no citations of the reference's sections


@pytest.mark.parametrize("name, builtins", [
    ("IllegalStateError", (RuntimeError,)),
    ("SegmentFreedError", (RuntimeError,)),
    ("IllegalReferenceCountError", (RuntimeError,)),
    ("CorruptPartitionFileError", (RuntimeError,)),
    ("InsufficientNetworkBuffersError", (OSError,)),
    ("BufferRequestTimeoutError", (TimeoutError,)),
    ("PartitionNotFoundError", (OSError,)),
    ("CorruptRecordError", (ValueError,)),
    ("CorruptEventError", (ValueError,)),
    ("CorruptFrameError", (ValueError,)),
    ("BufferReorderingError", (OSError,)),
    ("OutputFlusherError", (OSError,)),
    ("TransportError", (OSError,)),
    ("RemoteTransportError", (OSError,)),
    ("LocalTransportError", (OSError,)),
    ("HandshakeError", (ConnectionError, OSError)),
    ("ConfigurationError", (ValueError,)),
    ("UnknownConfigurationKeyError", (ValueError, KeyError)),
])
def test_builtin_bases_are_kept(name, builtins):
    cls = getattr(errors, name)
    assert issubclass(cls, FlinknetError)
    for base in builtins:
        assert issubclass(cls, base)


def test_subclass_relations():
    assert issubclass(errors.RemoteTransportError, errors.TransportError)
    assert issubclass(errors.LocalTransportError, errors.TransportError)
    assert issubclass(errors.CorruptPartitionFileError, errors.IllegalStateError)
    assert issubclass(errors.ProducerFailedError, errors.CancelTaskError)
    assert issubclass(errors.ConsumerLostError, errors.CancelTaskError)
    assert not issubclass(errors.ConsumerLostError, (errors.TransportError, errors.ProducerFailedError))
    assert issubclass(UnknownConfigurationKeyError, ConfigurationError)


@pytest.mark.parametrize("module, name", [
    ("flinknet.transport.client", "TransportError"),
    ("flinknet.transport.client", "RemoteTransportError"),
    ("flinknet.transport.client", "LocalTransportError"),
    ("flinknet.transport", "TransportError"),
    ("flinknet.transport", "RemoteTransportError"),
    ("flinknet.transport", "LocalTransportError"),
    ("flinknet.transport", "HandshakeError"),
    ("flinknet.transport.handshake", "HandshakeError"),
    ("flinknet.consumer.remote", "BufferReorderingError"),
    ("flinknet.writer", "OutputFlusherError"),
    ("flinknet.events", "CorruptEventError"),
    ("flinknet.partition.blocking", "CorruptPartitionFileError"),
    ("flinknet.partition", "CorruptPartitionFileError"),
    ("flinknet._core.protocol", "CorruptFrameError"),
])
def test_old_import_paths_give_the_same_class(module, name):
    assert getattr(importlib.import_module(module), name) is getattr(errors, name)


def test_old_modules_keep_their_all_entries():
    for module, name in [("flinknet.transport.client", "RemoteTransportError"),
                         ("flinknet.transport.client", "LocalTransportError"),
                         ("flinknet.transport.handshake", "HandshakeError"),
                         ("flinknet.consumer.remote", "BufferReorderingError"),
                         ("flinknet.writer", "OutputFlusherError"),
                         ("flinknet.events", "CorruptEventError"),
                         ("flinknet.partition.blocking", "CorruptPartitionFileError")]:
        assert name in importlib.import_module(module).__all__, (module, name)


def test_constructor_signatures_and_attributes():
    e = errors.RemoteTransportError("connection reset", ("127.0.0.1", 1234))
    assert e.address == ("127.0.0.1", 1234) and str(e) == "connection reset"
    assert errors.LocalTransportError("connect failed").address is None
    cause = RuntimeError("boom")
    assert errors.ProducerFailedError(cause).__cause__ is cause
    assert errors.CorruptFrameError("bad magic").args == ("bad magic",)
    lost = errors.ConsumerLostError("pid", 3, "local gate 'Sink (1/2)' (channel 0)", "the gate closed")
    assert (lost.partition_id, lost.subpartition, lost.consumer, lost.reason) == (
        "pid", 3, "local gate 'Sink (1/2)' (channel 0)", "the gate closed")
    for part in ("pid", "subpartition 3", "local gate 'Sink (1/2)' (channel 0)", "the gate closed"):
        assert part in str(lost)


def test_consumer_lost_error_pickles():
    from flinknet.ids import ResultPartitionID

    pid = ResultPartitionID()
    e = errors.ConsumerLostError(pid, 1, "remote consumer 127.0.0.1:4000 (receiver 00ff)", "reset")
    copy = pickle.loads(pickle.dumps(e))
    assert type(copy) is errors.ConsumerLostError and isinstance(copy, errors.CancelTaskError)
    assert str(copy) == str(e) and copy.args == e.args
    assert (copy.partition_id, copy.subpartition, copy.consumer, copy.reason) == (
        pid, 1, "remote consumer 127.0.0.1:4000 (receiver 00ff)", "reset")


# -- configuration errors --------------------------------------------------------------------------

TYPO = "taskmanager.network.memory.buffers-per-chanel"
KEY = "taskmanager.network.memory.buffers-per-channel"


def test_unknown_key_names_the_closest_key():
    with pytest.raises(UnknownConfigurationKeyError) as info:
        NetworkConfig({TYPO: 2})
    e = info.value
    for cls in (KeyError, ConfigurationError, ValueError, FlinknetError):
        assert isinstance(e, cls)
    assert str(e) == f"unknown configuration key '{TYPO}'; did you mean '{KEY}'?"
    assert e.key == TYPO and e.keys == (TYPO,) and e.suggestions == {TYPO: KEY}


@pytest.mark.parametrize("catch", [KeyError, ValueError, ConfigurationError, FlinknetError])
def test_unknown_key_is_caught_by_every_base(catch):
    with pytest.raises(catch):
        NetworkConfig(**{TYPO: 2})


def test_several_unknown_keys_each_with_its_suggestion():
    with pytest.raises(UnknownConfigurationKeyError) as info:
        NetworkConfig({TYPO: 2, "taskmanager.memory.segmentsize": "32kb", "zzz": 1})
    e = info.value
    assert e.keys == ("taskmanager.memory.segmentsize", TYPO, "zzz")
    assert e.suggestions == {TYPO: KEY, "taskmanager.memory.segmentsize": "taskmanager.memory.segment-size",
                             "zzz": None}
    message = str(e)
    assert f"'{TYPO}' (did you mean '{KEY}'?)" in message
    assert "'taskmanager.memory.segmentsize' (did you mean 'taskmanager.memory.segment-size'?)" in message
    assert "'zzz'" in message and "'zzz' (did you mean" not in message


def test_a_key_with_no_close_match_has_no_suggestion():
    with pytest.raises(UnknownConfigurationKeyError) as info:
        NetworkConfig({"zzz": 1})
    assert str(info.value) == "unknown configuration key 'zzz'"
    assert "did you mean" not in str(info.value)
    assert info.value.suggestions == {"zzz": None}


def test_unknown_key_message_is_not_repr_quoted():
    e = UnknownConfigurationKeyError(["a.b"], {"a.b": "a.c"})
    assert str(e) == "unknown configuration key 'a.b'; did you mean 'a.c'?"
    assert not str(e).startswith('"')


def test_non_string_keys_are_reported():
    with pytest.raises(UnknownConfigurationKeyError) as info:
        NetworkConfig({5: 1})
    assert info.value.keys == (5,) and info.value.suggestions == {5: None}


def test_looking_up_an_unknown_key():
    c = NetworkConfig()
    with pytest.raises(UnknownConfigurationKeyError, match="did you mean 'taskmanager.data.port'"):
        c["taskmanager.data.prot"]
    assert c.get("taskmanager.data.prot") is None and c.get("taskmanager.data.prot", 7) == 7
    assert "taskmanager.data.prot" not in c and "taskmanager.data.port" in c


def test_configuration_errors_pickle():
    e = UnknownConfigurationKeyError.for_keys([TYPO, "zzz"], [KEY])
    copy = pickle.loads(pickle.dumps(e))
    assert type(copy) is UnknownConfigurationKeyError
    assert (str(copy), copy.keys, copy.suggestions, copy.key) == (str(e), e.keys, e.suggestions, e.key)
    c = pickle.loads(pickle.dumps(ConfigurationError("k: bad", "k")))
    assert (str(c), c.key) == ("k: bad", "k")


@pytest.mark.parametrize("key, value", [
    ("taskmanager.memory.segment-size", "32 xb"),                 # bad size
    ("taskmanager.memory.segment-size", True),                    # a bool is not a size
    ("taskmanager.memory.network.max", "-1mb"),
    ("taskmanager.network.request-backoff.initial", "10 parsecs"),  # bad duration
    ("taskmanager.network.partition-request-timeout", float("nan")),
    ("taskmanager.network.memory.buffers-per-channel", "many"),    # bad int
    ("taskmanager.network.memory.buffers-per-channel", -1),
    ("execution.buffer-timeout.enabled", "perhaps"),               # bad bool
    ("flinknet.network.flow-control", "maybe"),                    # bad enum
    ("taskmanager.network.bind-host", 5),                          # not a string
])
def test_bad_values_are_configuration_errors_naming_the_key(key, value):
    with pytest.raises(ConfigurationError) as info:
        NetworkConfig({key: value})
    e = info.value
    assert isinstance(e, ValueError) and isinstance(e, FlinknetError)
    assert not isinstance(e, UnknownConfigurationKeyError)
    assert e.key == key and key in str(e)


@pytest.mark.parametrize("options, key", [
    ({"taskmanager.memory.segment-size": "3000"}, "taskmanager.memory.segment-size"),
    ({"taskmanager.memory.network.max": "32kb"}, "taskmanager.memory.network.max"),
    ({"taskmanager.memory.network.min": "128mb"}, "taskmanager.memory.network.max"),
    ({"taskmanager.network.request-backoff.initial": "1 s",
      "taskmanager.network.request-backoff.max": "10 ms"}, "taskmanager.network.request-backoff.max"),
    ({"taskmanager.data.port": 70000}, "taskmanager.data.port"),
])
def test_inconsistent_options_are_configuration_errors_naming_the_key(options, key):
    with pytest.raises(ConfigurationError) as info:
        NetworkConfig(options)
    assert isinstance(info.value, ValueError)
    assert info.value.key == key and key in str(info.value)


def test_the_parsers_raise_configuration_errors():
    with pytest.raises(ConfigurationError, match="--network-memory: cannot parse memory size"):
        parse_memory_size("12zz", "--network-memory")
    with pytest.raises(ConfigurationError, match="timeout: cannot parse duration"):
        parse_duration("10 parsecs", "timeout")
    with pytest.raises(ValueError):
        parse_duration(False)
