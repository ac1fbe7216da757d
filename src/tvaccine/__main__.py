from tvaccine.cli import main

raise SystemExit(main())
