"""The tools built on flinknet: the ``flinknet`` command (:mod:`flinknet.tools.cli`), the demo
job (:mod:`flinknet.tools.demo`) and the benchmarks (:mod:`flinknet.tools.bench`).

They are not part of the library's API: they use flinknet the way an application would (its
public names only), and the library never imports them (``tests/test_layout.py`` checks both
that and that there is no import cycle in here).
"""
