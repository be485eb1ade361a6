"""HTTP front ends: they translate requests to :mod:`service.dataplane` calls and results back, nothing more."""
