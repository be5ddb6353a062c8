import sys

from entrypoint.quickstart import quick_start

quick_start(sys.argv[1:])  # before the agent's modules load: see quickstart.py

from entrypoint.cli import main  # noqa: E402

raise SystemExit(main())
