"""The package's face: ``flinknet`` exports the framework API, ``flinknet.core`` the memory core."""

from __future__ import annotations

import importlib
import warnings

import pytest

import flinknet
from flinknet import core


def test_every_exported_name_resolves_and_none_comes_from_the_tools():
    for name in flinknet.__all__:
        obj = getattr(flinknet, name)
        module = getattr(obj, "__module__", "") or ""
        assert not module.startswith("flinknet.tools"), name


def test_the_framework_api_is_at_the_top():
    for name in ("NetworkEnvironment", "NetworkConfig", "RecordWriter", "RecordReader", "SingleInputGate",
                 "UnionInputGate", "ResultPartitionType", "ResultPartitionID", "KeyGroupStreamPartitioner",
                 "FlinknetError", "MetricRegistry", "TaskIOMetrics"):
        assert name in flinknet.__all__, name


def test_the_memory_core_lives_in_flinknet_core():
    for name in core.__all__:
        assert name not in flinknet.__all__, name
        assert hasattr(core, name), name
    # the compiled modules behind it are the ones flinknet.core re-exports
    assert core.NetworkBufferPool is importlib.import_module("flinknet._core.pool").NetworkBufferPool


def test_old_top_level_core_names_still_resolve_with_a_warning():
    with pytest.warns(DeprecationWarning, match="flinknet.core.NetworkBufferPool"):
        old = flinknet.NetworkBufferPool
    assert old is core.NetworkBufferPool
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(AttributeError, match="no attribute 'NoSuchName'"):
            flinknet.NoSuchName  # noqa: B018
