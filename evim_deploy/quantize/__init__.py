"""Mixed precision: the layer-group vocabulary (:mod:`.groups`, the floor every INT8 exporter translates),
per-group sensitivity (:mod:`.sensitivity`) and the ``--fidelity`` search (:mod:`.fidelity`).

Only :mod:`.groups` sits below the exporters; the search and the sensitivity report call ``export()``,
and ``export()`` never calls them.
"""
