from paystep.cli import main

raise SystemExit(main())
