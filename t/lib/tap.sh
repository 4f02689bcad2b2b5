# t/lib/tap.sh - the TAP plumbing of the shell suites (t/*.sh), one copy.
#
# Sourced by each suite:   . "$(dirname "$0")/lib/tap.sh"
#
#   ok STATUS NAME        a result: "ok N - NAME" when STATUS is 0, else "not ok"
#   pass NAME             a passing result
#   nok NAME              a failing result
#   check NAME CMD...     runs CMD; passes when it exits 0; returns CMD's status
#   is GOT WANT NAME      passes when the two strings are equal (else shows both)
#   like GOT ERE NAME     passes when GOT matches the extended regular expression
#   skip REASON           a skipped result: "ok N # SKIP REASON"
#   skip NAME REASON      the same with a name: "ok N - NAME # SKIP REASON"
#   diag TEXT...          "# TEXT" per argument; without arguments, each line
#                         of standard input
#   bail REASON           "Bail out! REASON", then a plan one more than what ran
#                         (so a counter sees a result missing), exit 1
#   skip_all REASON [RC]  "1..0 # SKIP REASON", exit RC (default 0)
#   tap_done              the plan "1..N" (printed at the end, like Test::More's
#                         done_testing); returns 1 when a result failed
#   tap_exit              tap_done, then exit with its status
#
# The counters are tap_n (results so far) and tap_failed (failed ones); the
# plan is never written by hand: scripts/check compares the count with the
# minimum of tests/MANIFEST, so a suite that runs fewer results still fails.

tap_n=0
tap_failed=0

ok() {
    tap_n=$((tap_n + 1))
    if [ "$1" -eq 0 ] 2>/dev/null; then
        echo "ok $tap_n - $2"
    else
        echo "not ok $tap_n - $2"
        tap_failed=$((tap_failed + 1))
    fi
}

pass() { ok 0 "$*"; }
nok() { ok 1 "$*"; }

check() {
    local name=$1 rc
    shift
    "$@"
    rc=$?
    ok "$rc" "$name"
    return "$rc"
}

is() {
    if [ "$1" = "$2" ]; then
        ok 0 "$3"
    else
        ok 1 "$3"
        diag "   got: '$1'" "  want: '$2'"
        return 1
    fi
}

like() {
    if [[ $1 =~ $2 ]]; then
        ok 0 "$3"
    else
        ok 1 "$3"
        diag "   got: '$1'" "  want: /$2/"
        return 1
    fi
}

skip() {
    tap_n=$((tap_n + 1))
    if [ $# -ge 2 ]; then
        echo "ok $tap_n - $1 # SKIP $2"
    else
        echo "ok $tap_n # SKIP $1"
    fi
}

diag() {
    if [ $# -gt 0 ]; then
        printf '# %s\n' "$@"
    else
        sed 's/^/# /'
    fi
}

bail() {
    echo "Bail out! $*"
    echo "1..$((tap_n + 1))"
    exit 1
}

skip_all() {
    echo "1..0 # SKIP $1"
    exit "${2:-0}"
}

tap_done() {
    echo "1..$tap_n"
    [ "$tap_failed" -eq 0 ]
}

tap_exit() {
    tap_done
    exit $?
}
