import sys

from auxot_client.cli import main

sys.exit(main())
