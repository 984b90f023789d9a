"""``python -m xlib_pipeline.cli``: the ``xlib-pipeline`` command."""

import sys

from . import main

sys.exit(main())
