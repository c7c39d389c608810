"""``flinknet bench``: flinknet's benchmarks, each row beside baselines measured in the same run.

:mod:`~flinknet.tools.bench.report` is the plumbing every suite shares (:class:`Row`, the table,
the ``--json`` document, the environment header) and imports no suite; the suites
(:mod:`~flinknet.tools.bench.kernels`, :mod:`~flinknet.tools.bench.exchange`,
:mod:`~flinknet.tools.bench.transport`, :mod:`~flinknet.tools.bench.network`,
:mod:`~flinknet.tools.bench.scale`, :mod:`~flinknet.tools.bench.floor`,
:mod:`~flinknet.tools.bench.runners`) import it;
:mod:`~flinknet.tools.bench.runner` (``flinknet bench``, ``python -m flinknet.tools.bench``)
imports the suites. ``_benchkit`` is compiled: C baselines (memcpy, raw builder loops).

This package imports nothing itself, so that ``python -m flinknet.tools.bench.scale`` and the
benchmarks' spawned processes load only the suite they run.
"""
