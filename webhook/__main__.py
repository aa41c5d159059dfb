"""``python -m webhook`` runs the ``portcullis`` command."""

import sys

from webhook.cli import main

sys.exit(main())
