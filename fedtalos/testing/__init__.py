"""Test tooling that tests and benchmarks share: fault injection, generated CIFAR-format data, process tools.

Imported only by tests, benchmarks and the fault-injection callback that ``FEDTALOS_KILL_AT`` switches on.
"""
