import os

# Triton reads this when a kernel module is first imported, so it must be set before any test
# imports `kernels`: on CPU every kernel then runs through Triton's interpreter.
os.environ.setdefault("TRITON_INTERPRET", "1")
