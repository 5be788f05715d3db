#!/bin/sh
exec '/shared/my project/it'"'"'s "here"/bin/python' -m cw.worker 'node 1' --port 5494 --cluster c1 --procs 4 --grace 12.5 --follow
