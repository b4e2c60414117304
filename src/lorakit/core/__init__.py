"""The bottom of lorakit's import graph: what every component shares and nothing it depends on.

``options`` (declared method options), ``spec`` (the resolved ``MethodSpec``), ``component``
(what forms, inits, optimizer recipes and schedules declare), ``protocol`` (the narrow view of
an attached adapter that components are typed against), ``generators`` (seeded per-layer
random generators), ``terms`` (in-place low-rank updates of a weight) and ``steps`` (the
optimizer-step counters kept with an adapter). Nothing here imports the rest of lorakit but
``lorakit.errors``.
"""
