"""parallel-r1: teach language models parallel thinking with reinforcement learning.

Where each concept of the papers lives is listed in README.md ("Where things live").
"""

__version__ = "0.1.0"
