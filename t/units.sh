#!/usr/bin/env bash
# t/units.sh BUILD_DIR - `make install` puts the bash completion and the
# systemd units where configure said, the units name the installed programs
# and pass `systemd-analyze verify`, `make uninstall` takes them away again.
# Installs only below a temporary DESTDIR.  TAP output.
set -u

top=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "${1:?usage: t/units.sh BUILD_DIR}" && pwd)
. "$top/t/lib/tap.sh"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
dest=$tmp/dest

# mkvar NAME: the value of make variable NAME in the build, fully expanded
mkvar() { printf 'print-it:\n\t@echo $(%s)\n' "$1" |
    make -s --no-print-directory -C "$build" -f Makefile -f - print-it; }
bcdir=$(mkvar bashcompletiondir)
sysdir=$(mkvar systemdsystemunitdir)
userdir=$(mkvar systemduserunitdir)
bindir=$(mkvar bindir)
sbindir=$(mkvar sbindir)
sysconfdir=$(mkvar sysconfdir)
pkgdatadir=$(mkvar pkgdatadir)

if make -s -C "$build" install DESTDIR="$dest" >"$tmp/install.log" 2>&1; then
    pass "make install DESTDIR=..."
else
    nok "make install DESTDIR=..."; sed 's/^/# /' "$tmp/install.log" | tail -n 20
fi
check "completion: $bcdir/kmdc" test -f "$dest$bcdir/kmdc"
check "completion: $bcdir/kmdcadm is a link to kmdc" \
    test -L "$dest$bcdir/kmdcadm" -a "$(readlink "$dest$bcdir/kmdcadm" 2>/dev/null)" = kmdc
check "completion: the installed script is completion/kmdc.bash" cmp -s "$top/completion/kmdc.bash" "$dest$bcdir/kmdc"
check "completion: bash reads it and it registers kmdc and kmdcadm" \
    bash -c ". '$dest$bcdir/kmdc' && complete -p kmdc kmdcadm >/dev/null"
for u in kmdc-purge.service kmdc-purge.timer; do
    check "unit: $sysdir/$u" test -f "$dest$sysdir/$u"
done
check "unit: $userdir/kmdc-watch.service" test -f "$dest$userdir/kmdc-watch.service"
check "units: every @placeholder@ replaced" \
    bash -c "! grep -n '@[a-z]*@' '$dest$sysdir/kmdc-purge.service' '$dest$userdir/kmdc-watch.service'"
check "kmdc-watch.service runs $bindir/kmdc watch" \
    grep -q "^ExecStart=$bindir/kmdc .*watch" "$dest$userdir/kmdc-watch.service"
check "kmdc-watch.service restarts on failure" grep -qx "Restart=on-failure" "$dest$userdir/kmdc-watch.service"
check "kmdc-purge.service runs $sbindir/kmdcadm purge" \
    grep -q "^ExecStart=$sbindir/kmdcadm purge" "$dest$sysdir/kmdc-purge.service"
check "kmdc-purge.service reads $sysconfdir/default/kmdc-purge" \
    grep -qx "EnvironmentFile=-$sysconfdir/default/kmdc-purge" "$dest$sysdir/kmdc-purge.service"
check "kmdc-purge.service connects as the administration role by default" \
    grep -q "^Environment=.*PGUSER=kmdc_owner" "$dest$sysdir/kmdc-purge.service"
check "the settings file's example: $pkgdatadir/examples/kmdc-purge.default" \
    test -f "$dest$pkgdatadir/examples/kmdc-purge.default"
# every variable the example sets is one the unit passes on or libpq reads
bad=$(sed -n 's/^#\{0,1\}\([A-Z_]*\)=.*/\1/p' "$top/systemd/kmdc-purge.default" | sort -u |
    while read -r v; do
        case $v in PG*) ;; *) grep -q "\$$v\b" "$dest$sysdir/kmdc-purge.service" || echo "$v" ;; esac
    done)
check "the settings file names only variables the unit uses (${bad:-all used})" test -z "$bad"

# systemd-analyze verify: the units as installed, with the programs' paths
# pointed at the build (the DESTDIR copies are not where the units say)
if command -v systemd-analyze >/dev/null 2>&1; then
    mkdir -p "$tmp/units" "$tmp/xdg"
    chmod 700 "$tmp/xdg"
    for f in "$dest$sysdir"/kmdc-purge.* "$dest$userdir"/kmdc-watch.service; do
        sed -e "s|$sbindir/kmdcadm|$build/admin/kmdcadm|; s|$bindir/kmdc |$build/kmdc/kmdc |" \
            "$f" >"$tmp/units/${f##*/}"
    done
    out=$(systemd-analyze verify --man=no "$tmp/units/kmdc-purge.service" "$tmp/units/kmdc-purge.timer" 2>&1)
    rc=$?
    if [ $rc -eq 0 ] && [ -z "$out" ]; then pass "systemd-analyze verify kmdc-purge.service kmdc-purge.timer: clean"
    else nok "systemd-analyze verify kmdc-purge.service kmdc-purge.timer"; echo "$out" | sed 's/^/# /'; fi
    out=$(XDG_RUNTIME_DIR=$tmp/xdg systemd-analyze --user verify --man=no "$tmp/units/kmdc-watch.service" 2>&1)
    rc=$?
    if [ $rc -eq 0 ] && [ -z "$out" ]; then pass "systemd-analyze --user verify kmdc-watch.service: clean"
    else nok "systemd-analyze --user verify kmdc-watch.service"; echo "$out" | sed 's/^/# /'; fi
    cal=$(sed -n 's/^OnCalendar=//p' "$tmp/units/kmdc-purge.timer")
    check "kmdc-purge.timer: OnCalendar=$cal is a valid calendar event" \
        bash -c 'systemd-analyze calendar "$0" >/dev/null 2>&1' "$cal"
else
    skip "systemd-analyze is not installed (verify kmdc-purge.service, .timer)"
    skip "systemd-analyze is not installed (verify kmdc-watch.service)"
    skip "systemd-analyze is not installed (calendar)"
fi

if make -s -C "$build" uninstall DESTDIR="$dest" >"$tmp/uninstall.log" 2>&1; then
    pass "make uninstall DESTDIR=..."
else
    nok "make uninstall DESTDIR=..."; sed 's/^/# /' "$tmp/uninstall.log" | tail -n 20
fi
left=$(cd "$dest" && find . -type f -o -type l | grep -E 'completion|systemd|kmdc-purge' || :)
check "make uninstall removes the completion, the units and the example${left:+ (left: $left)}" test -z "$left"

tap_done
