from entrypoint.main import main

raise SystemExit(main())
