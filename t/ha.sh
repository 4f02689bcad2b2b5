#!/usr/bin/env bash
# t/ha.sh - the high-availability suite, t/ha/*.t: a primary lost under load
# and a promoted standby (failover.t), pgbouncer in front (pgbouncer.t), a first
# host of a multi-host string that never answers (silent_host.t).  They run
# through t/run-suite, which gives them its environment (the built module and
# tools, a PostgreSQL cluster, a scratch folder).  failover.t starts its own
# PostgreSQL primary and standbys under /tmp (t/lib/KmdcHA.pm); the tests start
# their own httpd front-ends and pgbouncer processes on free ports and stop
# every one of them by process id at the end; nothing of the machine's own
# PostgreSQL, pgbouncer or Apache is touched.
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
# Under the sanitizer build, failover.t drives the plain build's kmdc and
# kmdcadm (when there is one): the module is what it exercises, and each of
# its few hundred client runs costs several times as much under ASan.
if [ -z "${KMDC_HA_CLIENT_BUILD:-}" ] && [ -x "$src/_build/kmdc/kmdc" ] &&
    [ "$(cd "$build" && pwd)" != "$src/_build" ]; then
    export KMDC_HA_CLIENT_BUILD="$src/_build"
fi
exec "$src/t/run-suite" "$build" "$@"
