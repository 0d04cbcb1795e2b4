"""``python -m scale_plugins.llamafactory ...`` = ``scale-llamafactory ...`` (the web UI starts training this way)."""

import sys

from .cli import main

sys.exit(main())
