"""scale-plugins: SCALe (Scheduled Curriculum Adaptive Loss) for chain-of-thought SFT.

Importing this package imports no training framework. The core lives in
``scale_plugins.core``; host adapters in ``scale_plugins.trl``,
``scale_plugins.axolotl`` and ``scale_plugins.llamafactory``.
"""

__version__ = "0.1.0"
