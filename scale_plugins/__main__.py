"""``python -m scale_plugins``: the ``scale-plugins`` command (:mod:`scale_plugins.tools.cli`)."""

import sys

from .tools.cli import main

sys.exit(main())
