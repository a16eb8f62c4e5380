"""psychocounsel: principle-based preference learning for psycho-counseling responses.

Importing the package is cheap and side-effect free: no torch, no logging setup.
"""

__version__ = "0.1.0"
