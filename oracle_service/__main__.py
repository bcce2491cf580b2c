"""`python -m oracle_service`: start the service."""

import sys

from oracle_service.main import main

sys.exit(main())
