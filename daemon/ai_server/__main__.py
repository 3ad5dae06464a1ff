from ai_server.cli import main

raise SystemExit(main())
