import sys

from heartbeat.cli import main

sys.exit(main())
