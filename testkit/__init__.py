"""What the tests and the benchmarks share: servers, processes, waiting, factories, and the
tests' ways in (the API and its tokens, dashboard pages, the browser, the CLI, runs).

Not part of the product (not installed); imported from the project root. The fixtures
built on these are in tests/conftest.py.
"""
