"""What wraps a backend: the ``Upstream`` seam and the policies around it.

``Cached(Fallback([Retrying(Direct(backend)), ...]))``: each wrapper's ``open(ask)`` returns
an ``Answer`` once its first event is in hand. ``Cached`` opens every answer as an answer
stream (``streams``): produced by a ``Flight``, kept by a ``Journal`` (Redis or in process),
read by followers, resumers (``answers.AnswerStreams``) and cache hits. Nothing here knows
HTTP or the wire formats.
"""
