"""Runnable examples for framework authors (``python -m flinknet.examples.wordcount --help``).

Each example is a complete program: it builds a :class:`~flinknet.graph.JobGraph`, writes the
task functions against :class:`~flinknet.graph.TaskContext` and runs the job on the runner named
on its command line. Their task functions live at module level so worker processes and Ray
actors can import them.
"""
