"""``python -m cw.worker HOST``: a worker (see ``cw worker --help``)."""
from . import main

main()
