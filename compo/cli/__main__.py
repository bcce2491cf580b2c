"""`python -m compo.cli ...`: the same as the `compo` command."""

import sys

from compo.cli.main import main

sys.exit(main())
