#!/usr/bin/env bash
# t/demo.sh - scripts/demo's build step and what it prints, in a fake tree
# (stub install-deps, configure and make), so that nothing is installed,
# built or started.  Prints TAP.
#
#   t/demo.sh [BUILDDIR]     (BUILDDIR unused)
#
# Checks: after an in-tree ./configure it uses the tree's own build instead
# of failing in _build/; a failing build shows the tail of its log (the
# reason) before "build failed"; no colour codes when stdout is not a
# terminal; every printed hint names PGUSER and PGDATABASE with PGHOST (a
# `kmdcadm list` run as root otherwise connects as the role root).
set -u
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
. "$here/lib/tap.sh"

work=$(mktemp -d /tmp/kmdc-demo-t.XXXXXX) || exit 1
trap 'rm -rf "$work"' EXIT

# fake TREE MAKE-RESULT: a tree whose configure and make are stubs; make
# prints a reason and fails when MAKE-RESULT is "fail".
fake() {
    local t=$1 result=$2
    mkdir -p "$t/scripts" "$t/t"
    cp "$top/scripts/demo" "$t/scripts/demo"
    printf '#!/bin/sh\nexit 0\n' >"$t/scripts/install-deps"
    printf '#!/bin/sh\necho "pgcluster stub: not starting anything" >&2\nexit 1\n' >"$t/t/pgcluster"
    touch "$t/configure.ac" "$t/Makefile.am"
    sleep 0.01
    touch "$t/Makefile.in"
    cat >"$t/configure" <<'CONF'
#!/bin/sh
# stub: writes a Makefile into the current folder; like autoconf's, it
# refuses a VPATH build of a tree that was configured in place
srcdir=$(cd "$(dirname "$0")" && pwd)
if [ "$srcdir" != "$(pwd)" ] && [ -f "$srcdir/config.status" ]; then
    echo "configure: error: source directory already configured; run \"make distclean\" there first" >&2
    exit 1
fi
cp "$srcdir/Makefile.stub" Makefile
CONF
    if [ "$result" = fail ]; then
        printf 'all:\n\t@echo "make: the compiler says: KMDC-STUB-REASON"; exit 2\n' >"$t/Makefile.stub"
    else
        printf 'all:\n\t@mkdir -p mod_kmdc/.libs admin kmdc && touch mod_kmdc/.libs/mod_kmdc.so && printf "#!/bin/sh\\n" > admin/kmdcadm && cp admin/kmdcadm kmdc/kmdc && chmod +x admin/kmdcadm kmdc/kmdc\n' >"$t/Makefile.stub"
    fi
    chmod +x "$t/scripts/demo" "$t/scripts/install-deps" "$t/t/pgcluster" "$t/configure"
}

# 1. a build that fails in _build/: the reason is shown
fake "$work/a" fail
out=$(KMDC_DEMO_NO_DEPS=1 KMDC_DEMO_DIR="$work/a-state" "$work/a/scripts/demo" 2>&1); rc=$?
[ $rc -ne 0 ] && [[ $out == *"KMDC-STUB-REASON"* ]] && [[ $out == *"build failed"* ]]
ok $? "a failing build shows the tail of its log, then 'build failed'"
[ $rc -ne 0 ] && [[ $out == *"KMDC-STUB-REASON"* ]] || diag "$out"
printf '%s' "$out" | grep -q $'\033'
[ $? -ne 0 ]; ok $? "no colour codes when stdout is not a terminal"

# 2. a tree configured in place (./configure && make): its own build is used
fake "$work/b" ok
(cd "$work/b" && ./configure >/dev/null && touch config.status)
out=$(KMDC_DEMO_NO_DEPS=1 KMDC_DEMO_DIR="$work/b-state" "$work/b/scripts/demo" 2>&1); rc=$?
[[ $out == *"in the tree, configured there"* ]] && [ ! -e "$work/b/_build/Makefile" ] \
    && [ -f "$work/b/mod_kmdc/.libs/mod_kmdc.so" ] && [[ $out == *"PostgreSQL did not start"* ]]
ok $? "after an in-tree ./configure the demo builds there and goes on (to PostgreSQL)"
[[ $out == *"in the tree, configured there"* ]] || diag "$out"

# 3. the same with a failing make: the reason, where the log is
fake "$work/c" fail
(cd "$work/c" && ./configure >/dev/null && touch config.status)
out=$(KMDC_DEMO_NO_DEPS=1 KMDC_DEMO_DIR="$work/c-state" "$work/c/scripts/demo" 2>&1); rc=$?
[ $rc -ne 0 ] && [[ $out == *"KMDC-STUB-REASON"* ]] && [[ $out == *"build failed (make in $work/c"* ]]
ok $? "an in-tree build that fails shows its reason and names the folder and log"

# 4. the hints it prints work as printed
hint=$(grep -n 'kmdcadm list' "$top/scripts/demo")
[[ $hint == *'PGHOST=$PGHOST'* ]] && [[ $hint == *'PGUSER=$PGUSER'* ]] && [[ $hint == *'PGDATABASE=$PGDATABASE'* ]]
ok $? "the kmdcadm hint gives PGHOST, PGPORT, PGDATABASE and PGUSER (works as root)"
out=$("$top/scripts/demo" --help 2>&1)
[[ $out == *"scripts/demo clean"* ]] && [[ $out == *"KMDC_DEMO_NO_DEPS"* ]] && [[ $out != *"set -u"* ]]
ok $? "--help prints the whole header and nothing else"

tap_done
