"""The NumPy reference: the executable specification of every operation.

Plain, readable NumPy in the structure of the course notebooks.  Every other
backend is tested against these functions run in float64.
"""
