"""What the tests and the benchmarks share: servers, processes, waiting, factories.

Not part of the product (not installed); imported from the project root.
"""
