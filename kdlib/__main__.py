from kdlib.course.cli import main

raise SystemExit(main())
