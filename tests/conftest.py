import os
import sys

# tests/reference.py (the NumPy twins) is importable from every test folder
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
