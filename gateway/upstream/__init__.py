"""What wraps a backend: the ``Upstream`` seam and the policies around it.

``Cached(Fallback([Retrying(Direct(backend)), ...]))``: each wrapper's ``open(ask)`` returns
an ``Answer`` once its first event is in hand. Nothing here knows HTTP or the wire formats.
"""
