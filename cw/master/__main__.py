"""``python -m cw.master``: a master (see ``cw master --help``)."""
from . import main

main()
