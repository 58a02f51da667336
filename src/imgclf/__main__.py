from imgclf.cli import run

raise SystemExit(run())
