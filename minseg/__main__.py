from minseg.cli import main

raise SystemExit(main())
