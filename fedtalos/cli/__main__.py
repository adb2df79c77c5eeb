"""``python -m fedtalos.cli COMMAND ...`` is ``fedtalos COMMAND ...`` (what the sweep runs, from any environment)."""

import sys

from fedtalos.cli.main import main

sys.exit(main())
