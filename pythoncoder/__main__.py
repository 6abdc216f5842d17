from pythoncoder.cli import main

raise SystemExit(main())
