"""``python -m egovlpv2_edge`` runs the ``egovlp`` command."""

from egovlpv2_edge.cli import main

raise SystemExit(main())
