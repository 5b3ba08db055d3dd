from rescueui.cli import main

raise SystemExit(main())
