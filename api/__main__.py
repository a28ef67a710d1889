"""`python -m api`: the Procfile's `api` process."""

import sys

from api.server import main

sys.exit(main())
