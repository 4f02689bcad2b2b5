#!/usr/bin/env bash
# t/tour.sh - README.md's tour, as written, against this machine's own Apache
# and PostgreSQL, then undone.  Prints TAP.
#
#   KMDC_SYSTEM_TESTS=1 t/tour.sh [BUILDDIR]      (BUILDDIR unused)
#
# It changes the machine, so it runs only with CI=true or KMDC_SYSTEM_TESTS=1
# (otherwise it prints a skip), as root, one at a time (flock on
# /tmp/kmdc-system-tests.lock).  The commands are every ```sh block of
# README.md between <!-- tour:begin and <!-- tour:end -->, run in order by one
# `bash -e` in a copy of this tree (its tracked files) with an empty HOME.
# Afterwards it undoes what the tour did: a2dissite/a2dismod (what was not
# enabled before), the site and kmdc.conf files, `make uninstall` and
# `make uninstall-debian`, the database kmdc and the roles kmdc_owner and
# kmdc_httpd, pg_hba.conf and pg_ident.conf as they were, /etc/kmdc when it
# was not there, the snakeoil certificate when the tour made it, packages
# the tour installed, and Apache and PostgreSQL running or stopped as before.
set -u
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
. "$here/lib/tap.sh"

if [ "${CI:-}" != true ] && [ "${KMDC_SYSTEM_TESTS:-0}" != 1 ]; then
    skip_all "changes this machine's Apache and PostgreSQL: set KMDC_SYSTEM_TESTS=1 (or CI=true)"
fi
if [ "$(id -u)" -ne 0 ]; then
    skip_all "the tour runs as root"
fi
exec 8>/tmp/kmdc-system-tests.lock
flock 8

# --- the commands ------------------------------------------------------------------
script=$(awk '/^<!-- tour:begin/ {on = 1; next} /^<!-- tour:end/ {on = 0}
              on && /^```sh$/ {code = 1; next} on && code && /^```$/ {code = 0; next}
              on && code {print}' "$top/README.md")
[ -n "$script" ]; ok $? "README.md has a marked tour with commands"
[ -n "$script" ] || { tap_done; exit 1; }

work=$(mktemp -d /tmp/kmdc-tour.XXXXXX)
chmod 755 "$work"
mkdir -p "$work/src" "$work/home"
(cd "$top" && git ls-files -z | tar --null -T - -cf -) | tar -xf - -C "$work/src"

# --- the state before --------------------------------------------------------------
pg_was_up=0; pg_lsclusters -h 2>/dev/null | awk '$1 == 15 && $2 == "main" && $4 == "online"' | grep -q . && pg_was_up=1
apache_was_up=0
[ -f /var/run/apache2/apache2.pid ] && kill -0 "$(cat /var/run/apache2/apache2.pid)" 2>/dev/null && apache_was_up=1
mods_before=$(ls /etc/apache2/mods-enabled 2>/dev/null)
sites_before=$(ls /etc/apache2/sites-enabled 2>/dev/null)
had_kmdc_conf=0; [ -e /etc/apache2/mods-available/kmdc.conf ] && had_kmdc_conf=1
had_etc_kmdc=0; [ -e /etc/kmdc ] && had_etc_kmdc=1
had_snakeoil=0; [ -f /etc/ssl/certs/ssl-cert-snakeoil.pem ] && had_snakeoil=1
certs_before=$(ls /etc/ssl/certs /etc/ssl/private 2>/dev/null)
pkgs_before=$(dpkg-query -W -f '${Package} ${Status}\n' 2>/dev/null | awk '$4 == "installed" {print $1}' | sort)
pgconf=/etc/postgresql/15/main
cp -p "$pgconf/pg_hba.conf" "$work/pg_hba.conf.before"
cp -p "$pgconf/pg_ident.conf" "$work/pg_ident.conf.before"

# --- the tour ----------------------------------------------------------------------
printf '%s\n' "$script" >"$work/tour.sh"
( cd "$work/src" && env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
      HOME="$work/home" LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive \
      bash -e -x "$work/tour.sh" ) >"$work/tour.log" 2>&1
rc=$?
ok $rc "the tour runs top to bottom as written (exit $rc)"
[ $rc -eq 0 ] || { diag "last lines of its output:"; tail -n 40 "$work/tour.log" | sed 's/^/#   /'; }
grep -q '{"status":"ok","schema":6}' "$work/tour.log"; ok $? "its /health over TLS answers ok, schema 6"
cmp -s "$work/src/report.txt" "$work/src/inbox/report.txt"; ok $? "bob received alice's document, byte for byte"
grep -q 'KmdcDatabase "host=/var/run/postgresql dbname=kmdc user=kmdc_httpd"' "$work/tour.log"
ok $? "kmdcadm setup printed the KmdcDatabase line the tour uses"

# --- undo ----------------------------------------------------------------------------
{
    a2dissite kmdc; rm -f /etc/apache2/sites-available/kmdc.conf
    for m in $(ls /etc/apache2/mods-enabled); do
        printf '%s\n' "$mods_before" | grep -qx "$m" || a2dismod -f "${m%.*}"
    done
    [ "$had_kmdc_conf" = 1 ] || rm -f /etc/apache2/mods-available/kmdc.conf
    (cd "$work/src" && make uninstall-debian && make uninstall)
    rm -f /etc/apache2/mods-available/kmdc.conf.dist
    [ "$had_kmdc_conf" = 1 ] || rm -f /etc/apache2/mods-available/kmdc.conf /etc/apache2/mods-available/kmdc.load
    if [ "$apache_was_up" = 1 ]; then apache2ctl graceful; else apache2ctl stop; fi
    runuser -u postgres -- psql -X -q -c 'DROP DATABASE IF EXISTS kmdc' \
        -c 'DROP ROLE IF EXISTS kmdc_httpd' -c 'DROP ROLE IF EXISTS kmdc_owner'
    cp -p "$work/pg_hba.conf.before" "$pgconf/pg_hba.conf"
    cp -p "$work/pg_ident.conf.before" "$pgconf/pg_ident.conf"
    if [ "$pg_was_up" = 1 ]; then service postgresql reload; else service postgresql stop; fi
    [ "$had_etc_kmdc" = 1 ] || rm -rf /etc/kmdc
    if [ "$had_snakeoil" = 0 ]; then
        for f in $(ls /etc/ssl/certs /etc/ssl/private 2>/dev/null); do :; done
        rm -f /etc/ssl/certs/ssl-cert-snakeoil.pem /etc/ssl/private/ssl-cert-snakeoil.key
        for d in /etc/ssl/certs; do
            find "$d" -maxdepth 1 -xtype l -delete
        done
    fi
    new_pkgs=$(comm -13 <(printf '%s\n' "$pkgs_before") <(dpkg-query -W -f '${Package} ${Status}\n' | awk '$4 == "installed" {print $1}' | sort))
    [ -z "$new_pkgs" ] || apt-get purge -y $new_pkgs
} >"$work/undo.log" 2>&1

# --- the state after ------------------------------------------------------------------
[ "$(ls /etc/apache2/mods-enabled)" = "$mods_before" ] && [ "$(ls /etc/apache2/sites-enabled)" = "$sites_before" ]
ok $? "undo: the enabled Apache modules and sites are those of before"
cmp -s "$work/pg_hba.conf.before" "$pgconf/pg_hba.conf" && cmp -s "$work/pg_ident.conf.before" "$pgconf/pg_ident.conf"
ok $? "undo: pg_hba.conf and pg_ident.conf are as before"
up=0; pg_lsclusters -h | awk '$1 == 15 && $2 == "main" && $4 == "online"' | grep -q . && up=1
left=""
if [ "$up" = 1 ]; then
    left=$(runuser -u postgres -- psql -XAtq -c "SELECT count(*) FROM pg_database WHERE datname = 'kmdc'" \
           -c "SELECT count(*) FROM pg_roles WHERE rolname IN ('kmdc_owner', 'kmdc_httpd')" | tr '\n' ' ')
fi
[ "$up" = "$pg_was_up" ] && { [ "$up" = 0 ] || [ "$left" = "0 0 " ]; }
ok $? "undo: PostgreSQL is $( [ "$pg_was_up" = 1 ] && echo running || echo stopped ) as before, without the database and roles"
aup=0; [ -f /var/run/apache2/apache2.pid ] && kill -0 "$(cat /var/run/apache2/apache2.pid)" 2>/dev/null && aup=1
[ "$aup" = "$apache_was_up" ]; ok $? "undo: Apache is $( [ "$apache_was_up" = 1 ] && echo running || echo stopped ) as before"
[ ! -e /usr/local/sbin/kmdcadm ] && [ ! -e /usr/local/bin/kmdc ] && [ ! -e /usr/lib/apache2/modules/mod_kmdc.so ] \
    && { [ "$had_etc_kmdc" = 1 ] || [ ! -e /etc/kmdc ]; } \
    && { [ "$had_kmdc_conf" = 1 ] || [ ! -e /etc/apache2/mods-available/kmdc.load ]; } \
    && [ ! -e /etc/apache2/sites-available/kmdc.conf ] \
    && [ "$(ls /etc/ssl/certs /etc/ssl/private 2>/dev/null)" = "$certs_before" ]
ok $? "undo: no installed file, key folder, configuration or certificate is left"
[ $tap_failed -eq 0 ] || { diag "undo log:"; tail -n 30 "$work/undo.log" | sed 's/^/#   /'; }

if [ "$tap_failed" -eq 0 ] && [ "${KMDC_KEEP:-0}" != 1 ]; then rm -rf "$work"; else diag "kept $work"; fi
tap_done
