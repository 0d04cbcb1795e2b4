"""The ``scale-plugins`` command (``python -m scale_plugins``), one module per subcommand.

:mod:`.cli` builds the parser and dispatches; :mod:`.schedule`, :mod:`.inspect`, :mod:`.demo`, :mod:`.bench` and
:mod:`.bench_paper` (with :mod:`.paper`) are the subcommands; :mod:`.args` turns the SCALe options into flags.
The tools import any layer of the package; nothing in the package imports them (``tests/test_layout.py``).
"""
