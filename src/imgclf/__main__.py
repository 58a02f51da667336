from imgclf.cli.main import main

raise SystemExit(main())
