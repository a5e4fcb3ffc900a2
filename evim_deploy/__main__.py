"""``python -m evim_deploy`` is the ``evim-deploy`` command."""
import sys

from evim_deploy.cli import main

sys.exit(main())
