"""`python -m oracle_service`: start the service."""

import sys

from .main import main

sys.exit(main())
