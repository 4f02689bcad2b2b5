#!/usr/bin/env bash
# t/ha.sh - the high-availability suite: t/ha/*.t (a primary lost under load
# and a promoted standby; pgbouncer in front) through t/run-suite, which gives
# them its environment (the built module and tools, a scratch folder).  Each
# test starts its own PostgreSQL clusters under /tmp (t/lib/KmdcHA.pm), its
# own httpd front-ends and, for pgbouncer, its own pgbouncer processes, on
# free ports, and stops every one of them by process id at the end; nothing
# of the machine's own PostgreSQL, pgbouncer or Apache is touched.
#
#   t/ha.sh BUILD_DIR [t/ha/NAME.t ...]
#
# scripts/check runs it once, against the sanitizer build (tests/MANIFEST:
# t/ha.sh:asan), because a failover takes tens of seconds.
set -u
src=$(cd "$(dirname "$0")/.." && pwd) || exit 1
[ $# -ge 1 ] || { echo "usage: t/ha.sh BUILD_DIR [t/ha/NAME.t ...]" >&2; exit 2; }
build=$1
shift
if [ $# -eq 0 ]; then
    set -- "$src"/t/ha/*.t
fi
exec "$src/t/run-suite" "$build" "$@"
