"""parallel-r1: teach language models parallel thinking with reinforcement learning.

Where each concept of the papers lives is listed in README.md ("Where things live").
"""

import os

__version__ = "0.1.0"

# MKL (torch's CPU BLAS) picks, by default, a kernel for matrices of 2-4 rows that costs 2-2.5x
# the one-row kernel on AMD CPUs; decoding k paths side by side is exactly that shape. Its
# conditional-reproducibility mode picks better ones there and is neutral for training-sized
# matrices (measured in docs/decoding.md, "Speed"). MKL reads the variable at its first call, so
# setting it on import works whenever no matrix product ran before; a value set by the user wins
# (``MKL_CBWR=`` restores MKL's own choice).
os.environ.setdefault("MKL_CBWR", "AUTO")
