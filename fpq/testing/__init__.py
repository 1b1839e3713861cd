"""Test and example support, not the library: the seeded example networks of the conformance
list (``networks``) and the inputs and cells of the HLS conformance matrix (``conformance``).

The tests, benchmarks, examples and the golden QONNX files (tests/golden/) use these; nothing in
fpq's own paths (convert, export, emulate, HLS, cost) imports this package.
"""
