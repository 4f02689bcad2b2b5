#!/usr/bin/env bash
# t/package.sh [BUILD_DIR] - the Debian packages, end to end, on this machine.
#
# TOUCHES THE SYSTEM: run as root on a Debian machine whose apache2 and
# postgresql may be used for a few minutes; scripts/check runs it only when
# CI=true or KMDC_SYSTEM_TESTS=1.  It
#   1. builds the packages from a copy of the source tree
#      (DEB_BUILD_OPTIONS="nocheck parallel=2 noddebs" dpkg-buildpackage -us -uc -b)
#      and runs lintian on them (no error allowed; warnings are printed);
#   2. installs them with apt-get install ./x.deb, enables the module
#      (a2enmod kmdc), checks `apache2ctl -t` and that Debian's apache2 runs
#      with the module enabled and not yet configured;
#   3. prepares a database on the machine's PostgreSQL cluster (roles
#      kmdc_pkgtest_owner and kmdc_pkgtest_httpd with random passwords over
#      127.0.0.1, database kmdc_pkgtest, the installed `kmdcadm migrate`, the
#      module's grants as docs/ADMIN.md lists them), a master key in a
#      temporary folder, and configures kmdc.conf;
#   4. starts apache2, issues two cards with the installed kmdcadm, activates
#      them, sends a document with the installed kmdc and fetches it;
#   5. purges the packages and undoes everything: the roles and the database
#      dropped, apache2 and postgresql back to running or stopped as they
#      were, /etc/apache2, /var/lib/apache2 and the cluster's roles and
#      databases as before (compared; /etc/apache2 is restored from a copy
#      if it differs), apt having installed nothing but the two packages.
# Holds /tmp/kmdc-system-tests.lock meanwhile (as t/tour.sh does), so two
# tests that use the machine's services never overlap.  apache2 is started
# and stopped with apache2ctl: Debian's init script refuses to start it while
# other httpds (the other suites' private ones) run.  Refuses to run when the packages are
# installed already.  TAP output; the seconds each stage took as comments.
set -u
umask 022

top=$(cd "$(dirname "$0")/.." && pwd)
export DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8
. "$top/t/lib/tap.sh"
stage_start=$SECONDS
stage() { echo "# --- $* (after $((SECONDS - stage_start)) s)"; }
bail() { nok "$*"; exit 1; }   # cleanup, on exit, prints the plan

[ "$(id -u)" = 0 ] || bail "t/package.sh needs root (it installs packages and uses apache2 and postgresql)"
for c in dpkg-buildpackage lintian apt-get apache2ctl a2enmod pg_lsclusters curl flock; do
    command -v "$c" >/dev/null 2>&1 || bail "$c is not installed (scripts/check installs it)"
done
exec 9>/tmp/kmdc-system-tests.lock
flock -w 1800 9 || bail "another system test holds /tmp/kmdc-system-tests.lock"

pkgs="libapache2-mod-kmdc kmdc"
for p in $pkgs; do
    if dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed\|config-files'; then
        bail "$p is installed already: not touching an existing installation"
    fi
done

tmp=$(mktemp -d /tmp/kmdc-package.XXXXXX)
chmod 755 "$tmp"
# What an installation by hand (make install-debian, a2enmod/a2dismod) left
# behind would make dpkg ask about kmdc.conf and keep the module disabled: it
# is moved aside meanwhile and put back after the purge.
aside=$(ls -d /etc/apache2/mods-available/kmdc.* /etc/apache2/mods-enabled/kmdc.* \
    /var/lib/apache2/module/*/kmdc 2>/dev/null)
owner=kmdc_pkgtest_owner httpd_role=kmdc_pkgtest_httpd db=kmdc_pkgtest
owner_pw=$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')
httpd_pw=$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')

# --- the state to come back to ------------------------------------------------------
snapshot() {   # the files of /etc/apache2 and /var/lib/apache2: path type mode link sum
    find /etc/apache2 /var/lib/apache2 -printf '%p %y %m %l\n' 2>/dev/null | sort |
        while read -r p y m l; do
            if [ "$y" = f ]; then echo "$p $y $m $(md5sum <"$p" | cut -c1-32)"; else echo "$p $y $m $l"; fi
        done
}
apache_running() { [ -s /run/apache2/apache2.pid ] && kill -0 "$(cat /run/apache2/apache2.pid)" 2>/dev/null; }
apache_start() {   # (re)start, then wait up to 60 s for the pid file
    local i
    apache2ctl restart >>"$tmp/apache.log" 2>&1
    for i in $(seq 1 120); do apache_running && return 0; sleep 0.5; done
    tail -n 5 "$tmp/apache.log" /var/log/apache2/error.log 2>/dev/null | diag
    return 1
}
apache_stop() {
    local i
    apache_running || return 0
    apache2ctl -k stop >>"$tmp/apache.log" 2>&1
    for i in $(seq 1 120); do apache_running || return 0; sleep 0.5; done
    return 1
}
snapshot >"$tmp/apache2.before"
tar -C / -cpf "$tmp/etc-apache2.tar" etc/apache2
if [ -n "$aside" ]; then
    echo "# moved aside until the end: $(echo $aside)"
    tar -C / -cpf "$tmp/aside.tar" $(echo "$aside" | sed 's|^/||') && rm -f $aside
fi
apache_was=stopped
apache_running && apache_was=running
read -r pg_ver pg_name pg_port pg_status _ < <(pg_lsclusters -h | sort -k1,1nr | head -n1)
[ -n "${pg_ver:-}" ] || bail "no PostgreSQL cluster on this machine (pg_lsclusters)"
echo "# apache2 was $apache_was; PostgreSQL cluster $pg_ver/$pg_name on port $pg_port was $pg_status"

psql_su() { runuser -u postgres -- psql -p "$pg_port" -XAtq -v ON_ERROR_STOP=1 "$@"; }
pg_state() {   # roles and databases, to compare before and after
    psql_su -d postgres -c "SELECT 'role ' || rolname FROM pg_roles UNION ALL
                            SELECT 'db ' || datname FROM pg_database ORDER BY 1"
}

# --- cleanup: runs on any exit, each step once ---------------------------------------
installed=0 pg_started=0 db_made=0 cleaned=0
cleanup() {
    [ "$cleaned" = 1 ] && return
    cleaned=1
    stage "undoing"
    if [ "$installed" = 1 ]; then
        apache_stop
        if apt-get purge -y -q $pkgs >"$tmp/purge.log" 2>&1; then pass "apt-get purge $pkgs"
        else nok "apt-get purge $pkgs"; tail -n 20 "$tmp/purge.log" | diag; fi
        left=$(ls -d /etc/apache2/mods-available/kmdc.* /etc/apache2/mods-enabled/kmdc.* \
            /usr/lib/apache2/modules/mod_kmdc.so /usr/bin/kmdc /usr/sbin/kmdcadm \
            /etc/default/kmdc-purge /usr/share/mod_kmdc 2>/dev/null)
        check "purge leaves no file of the packages${left:+: $left}" test -z "$left"
    fi
    if [ "$db_made" = 1 ]; then
        psql_su -d postgres -c "DROP DATABASE IF EXISTS $db" -c "DROP ROLE IF EXISTS $httpd_role" \
            -c "DROP ROLE IF EXISTS $owner" >"$tmp/drop.log" 2>&1
        check "the test database and roles are dropped" test $? -eq 0
    fi
    if [ -f "$tmp/pg.before" ]; then
        pg_state >"$tmp/pg.after" 2>&1
        if cmp -s "$tmp/pg.before" "$tmp/pg.after"; then pass "PostgreSQL: the roles and databases are as before"
        else nok "PostgreSQL: the roles and databases are as before"; diff "$tmp/pg.before" "$tmp/pg.after" | diag; fi
    fi
    if [ "$pg_started" = 1 ]; then
        pg_ctlcluster "$pg_ver" "$pg_name" stop >/dev/null 2>&1
        check "PostgreSQL $pg_ver/$pg_name stopped again, as it was" \
            bash -c "pg_lsclusters -h | awk '\$1 == \"$pg_ver\" && \$2 == \"$pg_name\" { print \$4 }' | grep -qx down"
    fi
    [ -f "$tmp/aside.tar" ] && tar -C / -xpf "$tmp/aside.tar"
    # a2enmod and the package's scripts leave empty state folders behind
    snapshot >"$tmp/apache2.after"
    comm -13 "$tmp/apache2.before" "$tmp/apache2.after" | awk '$2 == "d" { print $1 }' | sort -r |
        while read -r d; do rmdir "$d" 2>/dev/null; done
    snapshot >"$tmp/apache2.after"
    if cmp -s "$tmp/apache2.before" "$tmp/apache2.after"; then
        pass "/etc/apache2 and /var/lib/apache2 are as before"
    else
        nok "/etc/apache2 and /var/lib/apache2 are as before (restoring /etc/apache2 from the copy)"
        diff "$tmp/apache2.before" "$tmp/apache2.after" | head -n 20 | diag
        rm -rf /etc/apache2 && tar -C / -xpf "$tmp/etc-apache2.tar"
    fi
    if [ "$apache_was" = running ]; then
        check "apache2 running again, as it was" apache_start
    else
        apache_stop
        check "apache2 stopped, as it was" bash -c '! { [ -s /run/apache2/apache2.pid ] && kill -0 "$(cat /run/apache2/apache2.pid)"; } 2>/dev/null'
    fi
    gone=1
    for p in $pkgs; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'installed\|config-files' && gone=0
    done
    check "dpkg knows nothing more of $pkgs" test "$gone" = 1
    rm -rf "$tmp"
    echo "# total: $((SECONDS - stage_start)) s"
    tap_done
}
trap 'cleanup; if [ "$tap_failed" -eq 0 ]; then exit 0; else exit 1; fi' EXIT
trap 'exit 1' INT TERM

# --- 1. build and lintian -------------------------------------------------------------
stage "building the packages"
mkdir -p "$tmp/build/src"
if [ -d "$top/.git" ] || git -C "$top" rev-parse --git-dir >/dev/null 2>&1; then
    (cd "$top" && git ls-files -co --exclude-standard -z | xargs -0 cp --parents -t "$tmp/build/src")
else
    (cd "$top" && tar --exclude='./_build*' --exclude=./.git -cf - .) | tar -C "$tmp/build/src" -xf -
fi
t0=$SECONDS
(cd "$tmp/build/src" && DEB_BUILD_OPTIONS="nocheck parallel=2 noddebs" \
    dpkg-buildpackage -us -uc -b >"$tmp/build.log" 2>&1)
rc=$?
if [ $rc -eq 0 ]; then pass "dpkg-buildpackage -us -uc -b ($((SECONDS - t0)) s)"
else nok "dpkg-buildpackage -us -uc -b"; tail -n 40 "$tmp/build.log" | diag; exit 1; fi
ver=$(sed -n 's/^AC_INIT(\[mod_kmdc\], \[\([^]]*\)\].*/\1/p' "$top/configure.ac")
deb_ver=$(dpkg-parsechangelog -l "$top/debian/changelog" -S Version)
check "debian/changelog's version $deb_ver is configure.ac's $ver" test "$ver" = "$deb_ver"
debs=()
for p in $pkgs; do
    f=$(ls "$tmp/build/${p}_${deb_ver}_"*.deb 2>/dev/null | head -n1)
    if [ -n "$f" ]; then pass "built ${f##*/}"; debs+=("$f"); else nok "built ${p}_${deb_ver}_*.deb"; fi
done
[ ${#debs[@]} -eq 2 ] || exit 1
t0=$SECONDS
lintian --fail-on error --display-info \
    "$tmp/build/"mod-kmdc_*.changes >"$tmp/lintian.log" 2>&1
rc=$?
grep -v '^running with root privileges' "$tmp/lintian.log" | diag
if [ $rc -eq 0 ]; then pass "lintian: no error ($(grep -c '^[WIP]:' "$tmp/lintian.log") warnings or notes, $((SECONDS - t0)) s)"
else nok "lintian: no error"; fi
contents=$(for f in "${debs[@]}"; do dpkg-deb -c "$f"; done | awk '{ print $6 }' | sed 's|^\.||')
for f in /usr/lib/apache2/modules/mod_kmdc.so /etc/apache2/mods-available/kmdc.load \
         /etc/apache2/mods-available/kmdc.conf /usr/bin/kmdc /usr/sbin/kmdcadm \
         /usr/share/man/man1/kmdc.1.gz /usr/share/man/man8/kmdcadm.8.gz \
         /usr/share/mod_kmdc/sql/001_init.sql /usr/share/bash-completion/completions/kmdc \
         /usr/share/bash-completion/completions/kmdcadm /lib/systemd/system/kmdc-purge.service \
         /lib/systemd/system/kmdc-purge.timer /usr/lib/systemd/user/kmdc-watch.service \
         /etc/default/kmdc-purge; do
    check "the packages hold $f" grep -qx -- "$f" <<<"$contents"
done

# --- 2. install, enable ---------------------------------------------------------------
stage "installing"
installed=1
t0=$SECONDS
if apt-get install -y -q --no-install-recommends "${debs[@]}" >"$tmp/install.log" 2>&1; then
    pass "apt-get install ./libapache2-mod-kmdc.deb ./kmdc.deb ($((SECONDS - t0)) s)"
else
    nok "apt-get install ./libapache2-mod-kmdc.deb ./kmdc.deb"; tail -n 30 "$tmp/install.log" | diag; exit 1
fi
# what apt installed: ours, nothing else (the others are there already)
extra=$(sed -n '/NEW packages will be installed/,/^[^ ]/p' "$tmp/install.log" | grep '^ ' | tr ' ' '\n' |
    sed '/^$/d' | grep -vxE 'libapache2-mod-kmdc|kmdc' | tr '\n' ' ')
check "apt installed nothing else${extra:+: $extra}" test -z "$extra"
check "kmdcadm migrate finds the installed migrations (/usr/share/mod_kmdc/sql)" \
    bash -c 'kmdcadm migrate --help | grep -q /usr/share/mod_kmdc/sql'
out=$(a2enmod kmdc 2>&1)
check "a2enmod kmdc" test $? -eq 0
check "mods-enabled/kmdc.load and kmdc.conf link to mods-available" \
    test "$(readlink -f /etc/apache2/mods-enabled/kmdc.load)" = /etc/apache2/mods-available/kmdc.load \
    -a "$(readlink -f /etc/apache2/mods-enabled/kmdc.conf)" = /etc/apache2/mods-available/kmdc.conf
out=$(apache2ctl -t 2>&1)
if grep -q 'Syntax OK' <<<"$out"; then pass "apache2ctl -t with kmdc.conf as shipped: Syntax OK"
else nok "apache2ctl -t with kmdc.conf as shipped"; echo "$out" | diag; fi
check "apache2 starts with the module enabled and not configured" apache_start
code=000
for _ in $(seq 1 60); do
    code=$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1/kmdc/health) && [ "$code" != 000 ] && break
    sleep 0.5
done
check "unconfigured, the module serves nothing (/kmdc/health: $code)" test "$code" = 404

# --- 3. database, master key, kmdc.conf ----------------------------------------------------
stage "database"
if [ "$pg_status" != online ]; then
    pg_ctlcluster "$pg_ver" "$pg_name" start >"$tmp/pg.log" 2>&1 && pg_started=1
    check "PostgreSQL $pg_ver/$pg_name started" test "$pg_started" = 1 || { diag <"$tmp/pg.log"; exit 1; }
fi
pg_state >"$tmp/pg.before" 2>&1 || { nok "psql as postgres"; diag <"$tmp/pg.before"; exit 1; }
if grep -qE "^role ($owner|$httpd_role)$|^db $db$" "$tmp/pg.before"; then
    rm -f "$tmp/pg.before"; bail "the roles or database of this test exist already: not touching them"
fi
# TODO: `kmdcadm setup` (being added) does the roles, the grants and the key in one step.
db_made=1
psql_su -d postgres >"$tmp/psql.log" 2>&1 <<EOF
CREATE ROLE $owner LOGIN PASSWORD '$owner_pw';
CREATE ROLE $httpd_role LOGIN PASSWORD '$httpd_pw';
CREATE DATABASE $db OWNER $owner;
\connect $db
REVOKE ALL ON DATABASE $db FROM PUBLIC;
GRANT CONNECT, TEMPORARY ON DATABASE $db TO $owner;
GRANT CONNECT ON DATABASE $db TO $httpd_role;
REVOKE ALL ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO $httpd_role;
EOF
if [ $? -eq 0 ]; then pass "roles and database created"; else nok "roles and database created"; diag <"$tmp/psql.log"; exit 1; fi
export PGHOST=127.0.0.1 PGPORT=$pg_port PGDATABASE=$db PGUSER=$owner PGPASSWORD=$owner_pw
if kmdcadm migrate >"$tmp/migrate.log" 2>&1; then pass "the installed kmdcadm migrate, as $owner"
else nok "the installed kmdcadm migrate"; diag <"$tmp/migrate.log"; exit 1; fi
# the module's grants, as docs/ADMIN.md lists them
awk '/^### Grants for the module/ { on = 1 } on && /^```sql/ { p = 1; next } p && /^```/ { exit } p' \
    "$top/docs/ADMIN.md" | sed "s/\bkmdc_httpd\b/$httpd_role/g" >"$tmp/grants.sql"
check "docs/ADMIN.md has the module's grants" grep -q "GRANT .* TO $httpd_role" "$tmp/grants.sql"
if psql -XAtq -v ON_ERROR_STOP=1 -f "$tmp/grants.sql" >"$tmp/grants.log" 2>&1; then pass "the grants of docs/ADMIN.md applied"
else nok "the grants of docs/ADMIN.md applied"; diag <"$tmp/grants.log"; fi
mkdir -m 0700 "$tmp/keys"
if kmdcadm keygen --out "$tmp/keys/master-1.key" >/dev/null 2>&1; then pass "kmdcadm keygen"; else nok "kmdcadm keygen"; fi
cat >/etc/apache2/mods-available/kmdc.conf <<EOF
# written by t/package.sh; the package's purge removes it
<IfModule kmdc_module>
    KmdcDatabase "host=127.0.0.1 port=$pg_port dbname=$db user=$httpd_role password=$httpd_pw"
    KmdcMasterKey 1 $tmp/keys/master-1.key
    <Location /kmdc>
        SetHandler kmdc
        LimitRequestBody 65536
    </Location>
    <Location /kmdc/send>
        LimitRequestBody 1074790400
    </Location>
</IfModule>
EOF
out=$(apache2ctl -t 2>&1)
if grep -q 'Syntax OK' <<<"$out"; then pass "apache2ctl -t, configured: Syntax OK"
else nok "apache2ctl -t, configured"; echo "$out" | diag; fi

# --- 4. relay one document -----------------------------------------------------------------
stage "relaying"
check "apache2 restarts with the module configured" apache_start
body=''
for _ in $(seq 1 50); do
    body=$(curl -s http://127.0.0.1/kmdc/health) && [[ $body == *'"ok"'* ]] && break
    sleep 0.2
done
check "GET /kmdc/health: $body" grep -q '"status":"ok"' <<<"$body"
url=http://127.0.0.1/kmdc
mk="--master-key 1:$tmp/keys/master-1.key"
for who in alice bob; do
    out=$(kmdcadm $mk issue --address "pkgtest-$who" --url "$url" --out "$tmp/$who.card" 2>&1)
    code=$(sed -n 's/^access code: //p' <<<"$out")
    if [ -n "$code" ]; then pass "kmdcadm issue: a card for pkgtest-$who"; else nok "kmdcadm issue pkgtest-$who"; echo "$out" | diag; fi
    out=$(kmdc --card "$tmp/$who.card" activate "$code" 2>&1)
    check "kmdc activate ($who)" test $? -eq 0 || echo "$out" | diag
done
head -c 200000 /dev/urandom >"$tmp/report.bin"
out=$(kmdc --quiet --card "$tmp/alice.card" send --to pkgtest-bob "$tmp/report.bin" 2>&1)
check "the installed kmdc sends a document" test $? -eq 0 || echo "$out" | diag
mkdir "$tmp/inbox"
out=$(kmdc --quiet --card "$tmp/bob.card" fetch -d "$tmp/inbox" 2>&1)
check "the installed kmdc fetches it" test $? -eq 0 || echo "$out" | diag
check "the document arrived byte for byte" cmp -s "$tmp/report.bin" "$tmp/inbox/report.bin"
unset PGHOST PGPORT PGDATABASE PGUSER PGPASSWORD

# --- 5. purge and undo (cleanup, also on any earlier exit) -------------------------------
exit 0
