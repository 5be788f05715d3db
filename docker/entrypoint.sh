#!/bin/sh
# The cw image's entrypoint.
#
# With a command it runs that command: `docker run IMAGE python -m cw.worker
# HOST ...` is how ./slurm.py -d runs its workers. Without one, the CW_*
# environment variables say what this container is: a master, a master and a
# worker, or a worker (cw/launch/entrypoint.py). exec, so SIGTERM from
# `docker stop` reaches the process that drains.
set -e
if [ "$#" -gt 0 ]; then
    exec "$@"
fi
exec python -m cw.launch.entrypoint
