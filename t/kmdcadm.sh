#!/usr/bin/env bash
# t/kmdcadm.sh - kmdcadm against a private PostgreSQL cluster, printing TAP.
#
#   t/kmdcadm.sh [BUILDDIR | PATH-TO-KMDCADM]     (or env KMDCADM=PATH)
#
# Starts a cluster with t/pgcluster under a mktemp folder (stopped and removed
# on exit), then drives the built kmdcadm through migrate, keygen, issue, list,
# show, suspend/resume/revoke and their refusals, and checks the schema's
# invariants directly with psql.  Exit status non-zero on any failure.
set -u

here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)

arg=${1:-}
if [ -n "$arg" ] && [ -d "$arg" ]; then
    kmdcadm="$arg/admin/kmdcadm"
elif [ -n "$arg" ]; then
    kmdcadm=$arg
elif [ -n "${KMDCADM:-}" ]; then
    kmdcadm=$KMDCADM
else
    kmdcadm="$top/_build/admin/kmdcadm"
fi
case "$kmdcadm" in /*) ;; *) kmdcadm="$(pwd)/$kmdcadm" ;; esac

. "$here/lib/tap.sh"

[ -x "$kmdcadm" ] || bail "kmdcadm not built at $kmdcadm (pass BUILDDIR or KMDCADM)"

work=$(mktemp -d /tmp/kmdcadm-test.XXXXXX) || bail "mktemp failed"
chmod 755 "$work"
cleanup() {
    "$here/pgcluster" stop "$work/pg" >/dev/null 2>&1
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

envline=$("$here/pgcluster" start "$work/pg" 2>"$work/pgcluster.err")
rc=$?
[ $rc -eq 0 ] || { diag "$(cat "$work/pgcluster.err")"; }
ok $rc "pgcluster: a private cluster starts and prints its settings"
[ $rc -eq 0 ] || bail "no PostgreSQL cluster"
eval "$envline"
export PGHOST PGPORT PGDATABASE PGUSER
unset PGSERVICE PGOPTIONS PGPASSWORD

export KMDC_SQLDIR="$top/sql"
q() { psql -X -q -At -v ON_ERROR_STOP=1 "$@" 2>&1; }
adm() { "$kmdcadm" "$@"; }

# --- migrate -----------------------------------------------------------------
out=$(adm migrate 2>&1); rc=$?
[ $rc -eq 0 ] && [[ $out == *"applied 001_init.sql"* ]]
ok $? "migrate: applies 001_init.sql on an empty database"
[ $rc -eq 0 ] || diag "$out"
out=$(adm migrate 2>&1); rc=$?
[ $rc -eq 0 ] && [[ $out == *"up to date at version 6"* ]] && [[ $out != *applied* ]]
ok $? "migrate: a second run changes nothing and says so"
[ "$(q -c "SELECT count(*) || ':' || max(version) FROM schema_migrations")" = "6:6" ]
ok $? "migrate: schema_migrations records versions 1 to 6 once each"
q -c "CREATE DATABASE kmdc_race" >/dev/null
( PGDATABASE=kmdc_race adm migrate >"$work/m1" 2>&1; echo $? >"$work/m1.rc" ) &
( PGDATABASE=kmdc_race adm migrate >"$work/m2" 2>&1; echo $? >"$work/m2.rc" ) &
wait
[ "$(cat "$work/m1.rc")$(cat "$work/m2.rc")" = "00" ] \
    && [ "$(PGDATABASE=kmdc_race q -c "SELECT count(*) FROM schema_migrations")" = 6 ] \
    && [ "$(cat "$work/m1" "$work/m2" | grep -c 'applied 001_init.sql')" = 1 ]
ok $? "migrate: two concurrent migrators apply the file exactly once"
# version 5 -> 6 on a database that holds a message stored in an upload, while
# another session reads messages (as a download in progress does): the
# migration waits at most its lock_timeout, changes nothing, and succeeds once
# the reader is gone; the message keeps its upload
mkdir -p "$work/sql-v5"
cp "$top"/sql/00[1-5]_*.sql "$work/sql-v5/"
q -c "CREATE DATABASE kmdc_v5" >/dev/null
out=$(PGDATABASE=kmdc_v5 adm migrate --sqldir "$work/sql-v5" 2>&1)
w76="decode(repeat('00', 76), 'hex')"
PGDATABASE=kmdc_v5 q -c "INSERT INTO cards (serial, address, status, up_chain, down_chain, auth_key, key_id, activated_at)
        VALUES (77, 'old-sender', 'active', $w76, $w76, $w76, 1, now());
    INSERT INTO uploads (id, size) VALUES (5, 1);
    INSERT INTO upload_chunks (upload_id, idx, data) VALUES (5, 0, decode(repeat('ab', 40), 'hex'));
    INSERT INTO messages (id, sender, sender_seq, upload_id, size, payload_len) VALUES (500, 77, 0, 5, 1, 40);
    INSERT INTO deliveries (message_id, recipient, seq, head, expires_at)
        VALUES (500, 77, 0, decode(repeat('00', 120), 'hex'), now() + interval '1 day')" >/dev/null
[ "$(PGDATABASE=kmdc_v5 q -c "SELECT max(version) FROM schema_migrations")" = 5 ]
ok $? "migrate: a version-5 database holding a message in an upload (the set-up)"
mkfifo "$work/reader"
( { echo "BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM messages;"; cat "$work/reader"; } \
    | PGDATABASE=kmdc_v5 psql -X -q -At >/dev/null 2>&1 ) &
reader=$!
exec 8>"$work/reader"
sleep 1
t0=$SECONDS
out=$(PGDATABASE=kmdc_v5 timeout 60 "$kmdcadm" migrate 2>&1); rc=$?
took=$((SECONDS - t0))
echo "ROLLBACK;" >&8; exec 8>&-; wait "$reader"
[ $rc -eq 1 ] && [[ $out == *"lock timeout"* ]] && [ "$took" -le 30 ] \
    && [ "$(PGDATABASE=kmdc_v5 q -c "SELECT max(version) || ' ' || (to_regclass('messages_with_payload') IS NULL)
                                      FROM schema_migrations")" = "5 true" ]
ok $? "migrate: 006 gives up after its lock timeout while a reader holds messages, changing nothing"
[ $rc -eq 1 ] && [[ $out == *"lock timeout"* ]] || diag "rc $rc after $took s: $out"
out=$(PGDATABASE=kmdc_v5 adm migrate 2>&1); rc=$?
[ $rc -eq 0 ] && [[ $out == *"applied 006_inline_payload.sql"* ]] \
    && [ "$(PGDATABASE=kmdc_v5 q -c "SELECT upload_id || ' ' || (payload IS NULL) || ' ' ||
              (SELECT count(*) FROM upload_chunks WHERE upload_id = 5) FROM messages WHERE id = 500")" = "5 true 1" ]
ok $? "migrate: run again, 006 applies; the old message keeps its upload and has no payload of its own"
[ $rc -eq 0 ] || diag "$out"
[ "$(PGDATABASE=kmdc_v5 q -c "SELECT attstorage FROM pg_attribute WHERE attrelid = 'messages'::regclass
                              AND attname = 'payload'")" = e ] \
    && PGDATABASE=kmdc_v5 q -c "ALTER TABLE messages VALIDATE CONSTRAINT messages_one_payload" >/dev/null \
    && ! PGDATABASE=kmdc_v5 q -c "UPDATE messages SET payload = '\\x00' WHERE id = 500" >/dev/null
ok $? "migrate: payload stored uncompressed; messages_one_payload validates on old rows and refuses both"
out=$(adm migrate --sqldir "$work/nonexistent" 2>&1); rc=$?
[ $rc -eq 1 ] && [[ $out == kmdcadm:* ]]
ok $? "migrate: a missing migrations folder fails with exit 1 and a message"
mkdir -p "$work/sql-newer"
cp "$top"/sql/00[1-6]_*.sql "$work/sql-newer/"
printf 'CREATE TABLE t_bad (x int);\n' >"$work/sql-newer/007_norecord.sql"
out=$(adm migrate --sqldir "$work/sql-newer" 2>&1); rc=$?
[ $rc -eq 1 ] && [[ $out == *"does not record itself"* ]] \
    && [ "$(q -c "SELECT to_regclass('t_bad') IS NULL")" = t ]
ok $? "migrate: a file that does not record its version is rolled back"

# --- keygen ----------------------------------------------------------------------
adm keygen --out "$work/mk1.key" >/dev/null 2>&1; rc=$?
[ $rc -eq 0 ] && [ "$(stat -c %a "$work/mk1.key")" = 600 ] \
    && grep -qE '^[0-9a-f]{64}$' "$work/mk1.key"
ok $? "keygen: writes 64 hex digits in a file of mode 0600"
before=$(cat "$work/mk1.key")
adm keygen --out "$work/mk1.key" >/dev/null 2>&1; rc=$?
[ $rc -eq 1 ] && [ "$(cat "$work/mk1.key")" = "$before" ]
ok $? "keygen: an existing key file is never replaced"
adm keygen --out "$work/mk2.key" >/dev/null 2>&1
MK="--master-key 1:$work/mk1.key"

# --- issue -----------------------------------------------------------------------
out=$(adm $MK issue --address Alice.Example --url https://dc.example/kmdc \
    --out "$work/alice.card" 2>&1); rc=$?
ok $rc "issue: exits 0"
[ $rc -eq 0 ] || diag "$out"
[ -f "$work/alice.card" ] && [ "$(stat -c %a "$work/alice.card")" = 600 ]
ok $? "issue: the card file exists with mode 0600"
[ -z "$(find "$work" -maxdepth 1 -name '.alice.card.*')" ]
ok $? "issue: no temp file is left beside the card file"
# the temporary card file is made beside the card file, never elsewhere (it
# once landed in / : a card's secrets in the root folder, or EACCES / EXDEV)
mkdir "$work/sub"
strace -f -qq -e trace=openat -o "$work/issue.strace" \
    "$kmdcadm" $MK issue --address dora --url https://dc.example/kmdc \
    --out "$work/sub/dora.card" >/dev/null 2>&1; rc=$?
[ $rc -eq 0 ] && [ -f "$work/sub/dora.card" ] \
    && grep -q "\"$work/sub/\.dora\.card\.issue-" "$work/issue.strace" \
    && ! grep -qE '"/\.dora\.card\.issue-' "$work/issue.strace"
ok $? "issue: the temporary card file is made in the card file's folder"
[ $rc -eq 0 ] || diag "exit $rc: $(grep issue- "$work/issue.strace" | head -3)"
q -c "DELETE FROM cards WHERE address = 'dora'" >/dev/null   # the counts below know three
code_lines=$(printf '%s\n' "$out" | grep -cE '^access code: [0-9A-HJKMNP-TV-Z]{5}-[0-9A-HJKMNP-TV-Z]{5}-[0-9A-HJKMNP-TV-Z]$')
[ "$code_lines" = 1 ] && [[ $out == *"shown only this once"* ]]
ok $? "issue: prints one Crockford access code XXXXX-XXXXX-C (C: check symbol) and says it is shown once"
serial=$(printf '%s\n' "$out" | sed -n 's/^serial: \([0-9a-f]\{16\}\)$/\1/p')
[ -n "$serial" ]
ok $? "issue: prints the serial as 16 hex digits"
serial=${serial:-0000000000000001}
sdec=$((16#$serial))
row=$(q -c "SELECT address, status, up_next, down_next, key_id, locked,
                   activation_failures, activated_at IS NULL
            FROM cards WHERE serial = $sdec")
[ "$row" = "alice.example|issued|0|0|1|f|0|t" ]
ok $? "issue: the row is stored lower-cased, status issued, counters 0, key id 1"
[ -n "$row" ] || diag "row: $row"
wr=$(q -c "SELECT encode(up_chain, 'hex') || ' ' || encode(down_chain, 'hex') || ' '
                  || encode(auth_key, 'hex') FROM cards WHERE serial = $sdec")
read -r w_up w_down w_ak <<<"$wr"
[ ${#w_up} -eq 152 ] && [ ${#w_down} -eq 152 ] && [ ${#w_ak} -eq 152 ] \
    && [ "${w_up:0:8}" = 00000001 ] && [ "${w_down:0:8}" = 00000001 ] && [ "${w_ak:0:8}" = 00000001 ] \
    && [ "$w_up" != "$w_down" ] && [ "$w_down" != "$w_ak" ]
ok $? "issue: the three keys are stored wrapped (76 bytes, key id 1 first)"
# No 16-byte run of the card file (which holds the raw keys) appears in a
# wrapped value: the database never holds a raw key.
cardhex=$(od -An -v -tx1 "$work/alice.card" | tr -d ' \n')
leak=0
for w in "$w_up" "$w_down" "$w_ak"; do
    for ((i = 0; i + 32 <= ${#w}; i += 2)); do
        win=${w:i:32}
        for ((j = 0; j + 32 <= ${#cardhex}; j += 2)); do
            if [ "${cardhex:j:32}" = "$win" ]; then leak=1; break 3; fi
        done
    done
done
[ ${#cardhex} -gt 192 ] && [ $leak -eq 0 ]
ok $? "issue: no run of the card file's bytes appears in the wrapped keys"
[ "$(q -c "SELECT octet_length(access_mac) = 32
                  AND access_expires BETWEEN now() + interval '6 days 23 hours'
                                         AND now() + interval '7 days 1 hour'
           FROM cards WHERE serial = $sdec")" = t ]
ok $? "issue: access_mac stored (32 bytes), the code expires in 7 days"
[ "$(q -c "SELECT count(*) FROM audit_log WHERE serial = $sdec AND event = 'card.issued'
           AND detail::text NOT LIKE '%alice%'")" = 1 ]
ok $? "issue: one card.issued audit row, without the address"

out=$(adm $MK issue --address ALICE.example --url https://dc.example/kmdc \
    --out "$work/alice2.card" 2>&1); rc=$?
[ $rc -eq 1 ] && [[ $out == "kmdcadm: "*"already exists"* ]] && [ ! -e "$work/alice2.card" ] \
    && [ -z "$(find "$work" -maxdepth 1 -name '.alice2.card.*')" ]
ok $? "issue: a second card for the same address is refused, no file left"
[ $rc -eq 1 ] || diag "$out"
[ "$(q -c "SELECT count(*) FROM cards WHERE address = 'alice.example'")" = 1 ]
ok $? "issue: the refused card left no row"
cp "$work/alice.card" "$work/alice.copy"
adm $MK issue --address bob --url https://dc.example/kmdc --out "$work/alice.card" >/dev/null 2>&1; rc=$?
[ $rc -eq 1 ] && cmp -s "$work/alice.card" "$work/alice.copy" \
    && [ "$(q -c "SELECT count(*) FROM cards WHERE address = 'bob'")" = 0 ]
ok $? "issue: an existing card file is not replaced without --force"
out=$(adm $MK issue --address 'bad/addr' --url https://dc.example/kmdc --out "$work/x.card" 2>&1); rc=$?
[ $rc -eq 2 ] && [ ! -e "$work/x.card" ]
ok $? "issue: an invalid address is a usage error (exit 2)"
adm issue --address carol --url https://dc.example/kmdc --out "$work/x.card" >/dev/null 2>&1; rc=$?
[ $rc -eq 2 ] && [ ! -e "$work/x.card" ]
ok $? "issue: no --master-key is a usage error (exit 2)"
cp "$work/mk1.key" "$work/loose.key"; chmod 644 "$work/loose.key"
out=$(adm --master-key "1:$work/loose.key" issue --address carol \
    --url https://dc.example/kmdc --out "$work/x.card" 2>&1); rc=$?
[ $rc -eq 1 ] && [ ! -e "$work/x.card" ] && [[ $out == kmdcadm:* ]] \
    && [ "$(q -c "SELECT count(*) FROM cards WHERE address = 'carol'")" = 0 ]
ok $? "issue: a master key file readable by others (0644) is refused"
out=$(adm --master-key "1:$work/mk1.key" --master-key "2:$work/mk2.key" issue --address carol \
    --url https://dc.example/kmdc --out "$work/carol.card" 2>&1); rc=$?
cserial=$(printf '%s\n' "$out" | sed -n 's/^serial: \([0-9a-f]\{16\}\)$/\1/p')
[ $rc -eq 0 ] && [ -n "$cserial" ] \
    && [ "$(q -c "SELECT key_id FROM cards WHERE serial = $((16#${cserial:-1}))")" = 2 ]
ok $? "issue: with two master keys the highest id wraps"
printf 'correct horse\n' >"$work/pass"
chmod 644 "$work/pass"
out=$(adm $MK issue --address dave --url https://dc.example/kmdc --out "$work/dave.card" \
    --passphrase-file "$work/pass" 2>&1); rc=$?
[ $rc -eq 1 ] && [ ! -e "$work/dave.card" ] && [[ $out == *"chmod 600"* ]]
ok $? "issue: a passphrase file readable by others (0644) is refused, as a card would be"
chmod 600 "$work/pass"
out=$(adm $MK issue --address dave --url https://dc.example/kmdc --out "$work/dave.card" \
    --passphrase-file "$work/pass" 2>&1); rc=$?
[ $rc -eq 0 ] && [ "$(stat -c %a "$work/dave.card")" = 600 ] && ! grep -q "dave" "$work/dave.card"
ok $? "issue: --passphrase-file writes a protected card file"
[ $rc -eq 0 ] || diag "$out"

# --- list / show -------------------------------------------------------------------
hexleak() {   # output contains a 32+ hex-digit run or a 16-byte run of the card file
    local s=$1 i
    printf '%s' "$s" | grep -qE '[0-9a-fA-F]{32}' && return 0
    for ((i = 0; i + 32 <= ${#cardhex}; i += 2)); do
        [[ $s == *"${cardhex:i:32}"* ]] && return 0
    done
    return 1
}
out=$(adm list 2>&1); rc=$?
[ $rc -eq 0 ] && printf '%s\n' "$out" | head -n1 | grep -qE '^SERIAL +ADDRESS +STATUS +LOCKED +UP_NEXT +DOWN_NEXT +CREATED$' \
    && printf '%s\n' "$out" | grep -qE "^$serial +alice\.example +issued +no +0 +0 +[0-9]{4}-"
ok $? "list: aligned columns with the issued card"
[ $rc -eq 0 ] || diag "$out"
! hexleak "$out"
ok $? "list: no key material in the output"
out=$(adm list --json 2>&1); rc=$?
[ $rc -eq 0 ] && printf '%s' "$out" | python3 -c '
import json, sys
cards = json.load(sys.stdin)
assert len(cards) == 3 and all(set(c) == {"serial","address","status","locked","up_next","down_next","created"} for c in cards)'
ok $? "list --json: a JSON array of the three cards"
out=$(adm list --status revoked 2>&1); rc=$?
[ $rc -eq 0 ] && [ "$(printf '%s\n' "$out" | wc -l)" = 1 ]
ok $? "list --status: filters (no revoked card yet)"
out=$(adm show "$serial" 2>&1); rc=$?
[ $rc -eq 0 ] && printf '%s\n' "$out" | grep -qE '^status +issued$' \
    && printf '%s\n' "$out" | grep -qE '^deliveries_queued +0$' \
    && printf '%s\n' "$out" | grep -qE '^address +alice\.example$'
ok $? "show: the card's status, address and queued deliveries"
[ $rc -eq 0 ] || diag "$out"
! hexleak "$(printf '%s\n' "$out" | grep -v '^serial ')" \
    && ! printf '%s' "$out" | grep -qiE 'mac|chain|auth_key'
ok $? "show: no key material in the output"
out=$(adm show --json "${serial^^}" 2>&1); rc=$?
[ $rc -eq 0 ] && printf '%s' "$out" | python3 -c '
import json, sys
c = json.load(sys.stdin)
assert c["status"] == "issued" and c["deliveries_queued"] == 0 and "up_chain" not in c'
ok $? "show --json: one JSON object, serial accepted in upper case"
adm show 0000000000000001 >/dev/null 2>&1; rc=$?
[ $rc -eq 1 ]
ok $? "show: an unknown serial fails with exit 1"
adm show xyz >/dev/null 2>&1; rc=$?
[ $rc -eq 2 ]
ok $? "show: a malformed serial is a usage error"

# --- suspend / resume / revoke -----------------------------------------------------
st() { q -c "SELECT status FROM cards WHERE serial = $sdec"; }
out=$(adm suspend "$serial" --reason "lost laptop" 2>&1); rc=$?
[ $rc -eq 0 ] && [ "$(st)" = suspended ] && [[ $out == *"issued -> suspended"* ]]
ok $? "suspend: issued -> suspended"
out=$(adm suspend "$serial" 2>&1); rc=$?
[ $rc -eq 1 ] && [[ $out == *"already suspended"* ]]
ok $? "suspend: a suspended card is refused with a clear message"
out=$(adm resume "$serial" 2>&1); rc=$?
[ $rc -eq 0 ] && [ "$(st)" = issued ]
ok $? "resume: a never-activated card goes back to issued"
out=$(adm resume "$serial" 2>&1); rc=$?
[ $rc -eq 1 ] && [[ $out == *"not suspended"* ]]
ok $? "resume: a card that is not suspended is refused"
adm suspend "$serial" >/dev/null 2>&1
out=$(adm revoke "$serial" --reason "left the company" 2>&1); rc=$?
[ $rc -eq 0 ] && [ "$(st)" = revoked ]
ok $? "revoke: suspended -> revoked"
adm resume "$serial" >/dev/null 2>&1; r1=$?
adm suspend "$serial" >/dev/null 2>&1; r2=$?
out=$(adm revoke "$serial" 2>&1); r3=$?
[ $r1 -eq 1 ] && [ $r2 -eq 1 ] && [ $r3 -eq 1 ] && [[ $out == *"final"* ]] && [ "$(st)" = revoked ]
ok $? "revoke: final, resume/suspend/revoke of a revoked card are refused"
adm revoke 0000000000000001 >/dev/null 2>&1; rc=$?
[ $rc -eq 1 ]
ok $? "revoke: an unknown serial fails with exit 1"
[ "$(q -c "SELECT string_agg(event || ':' || (detail->>'from') || '>' || (detail->>'to'), ',' ORDER BY id)
           FROM audit_log WHERE serial = $sdec AND event <> 'card.issued'")" \
  = "card.suspended:issued>suspended,card.resumed:suspended>issued,card.suspended:issued>suspended,card.revoked:suspended>revoked" ]
ok $? "audit: one row per status change, with from and to"
[ "$(q -c "SELECT count(*) FROM audit_log WHERE serial = $sdec AND detail->>'reason' IN ('lost laptop', 'left the company')")" = 2 ]
ok $? "audit: the reasons are recorded"
out=$(adm $MK issue --address alice.example --url https://dc.example/kmdc --out "$work/alice3.card" 2>&1); rc=$?
[ $rc -eq 0 ] && [ "$(q -c "SELECT count(*) FROM cards WHERE address = 'alice.example'")" = 2 ]
ok $? "issue: after revocation the address can have a new card"

# --- the schema's invariants against a buggy caller -----------------------------------
new=$((16#$(printf '%s\n' "$out" | sed -n 's/^serial: //p')))
refused() { ! q -c "$1" >/dev/null 2>&1; }
refused "UPDATE cards SET status = 'issued' WHERE serial = $sdec"
ok $? "schema: a revoked card cannot be un-revoked"
q -c "UPDATE cards SET up_next = 5, down_next = 3 WHERE serial = $new" >/dev/null
refused "UPDATE cards SET up_next = 4 WHERE serial = $new" \
    && refused "UPDATE cards SET down_next = 2 WHERE serial = $new"
ok $? "schema: counters never go back"
refused "UPDATE cards SET down_next = 9223372036854775807 + 1 WHERE serial = $new" \
    && refused "INSERT INTO receipts (serial, seq, envelope_sha256, http_status, answer)
                VALUES ($new, -1, decode(repeat('00', 32), 'hex'), 201, '{}')"
ok $? "schema: counters stay within 0 .. 2^63-1"
refused "UPDATE cards SET status = 'active' WHERE serial = $new"
ok $? "schema: a card cannot be active without having been activated"
refused "INSERT INTO cards (serial, address, up_chain, down_chain, auth_key, key_id, access_mac, access_expires)
         SELECT 77, 'alice.example', up_chain, down_chain, auth_key, key_id, access_mac, access_expires
         FROM cards WHERE serial = $new"
ok $? "schema: one live card per address"
q -c "INSERT INTO receipts (serial, seq, envelope_sha256, http_status, answer)
      VALUES ($new, 0, decode(repeat('00', 32), 'hex'), 201, '{}')" >/dev/null
refused "INSERT INTO receipts (serial, seq, envelope_sha256, http_status, answer)
         VALUES ($new, 0, decode(repeat('11', 32), 'hex'), 201, '{}')"
ok $? "schema: one receipt per (serial, seq)"
q -c "INSERT INTO messages (id, sender, sender_seq, size, payload_len) VALUES (10, $new, 0, 0, 16);
      INSERT INTO messages (id, sender, sender_seq, size, payload_len) VALUES (11, $new, 1, 0, 16);
      INSERT INTO deliveries (message_id, recipient, seq, head, expires_at)
      VALUES (10, $new, 0, decode(repeat('00', 120), 'hex'), now() + interval '1 day')" >/dev/null
refused "INSERT INTO deliveries (message_id, recipient, seq, head, expires_at)
         VALUES (11, $new, 0, decode(repeat('00', 120), 'hex'), now() + interval '1 day')" \
    && refused "INSERT INTO deliveries (message_id, recipient, seq, head, expires_at)
                VALUES (10, $new, 1, decode(repeat('00', 120), 'hex'), now() + interval '1 day')"
ok $? "schema: unique (recipient, seq) and (message, recipient) deliveries"
refused "INSERT INTO messages (id, sender, sender_seq, size, payload_len) VALUES (12, $new, 0, 0, 16)"
ok $? "schema: unique (sender, sender_seq) messages"
out=$(adm show "$(printf '%016x' "$new")" 2>&1)
printf '%s\n' "$out" | grep -qE '^deliveries_queued +1$' && printf '%s\n' "$out" | grep -qE '^messages_sent +2$'
ok $? "show: counts the queued delivery and the messages sent"

# --- usage ---------------------------------------------------------------------------
for c in migrate keygen issue list show suspend resume revoke; do
    out=$(adm "$c" --help 2>&1); rc=$?
    [ $rc -eq 0 ] && [[ $out == "Usage: kmdcadm"*"$c"* ]]
    ok $? "usage: kmdcadm $c --help exits 0"
done
out=$(adm --help 2>&1); rc=$?
[ $rc -eq 0 ] && [[ $out == *migrate* ]] && [[ $out == *revoke* ]]
ok $? "usage: kmdcadm --help lists the commands"
adm frobnicate >/dev/null 2>&1; rc=$?
[ $rc -eq 2 ]
ok $? "usage: an unknown command exits 2"
adm list --bogus >/dev/null 2>&1; rc=$?
[ $rc -eq 2 ]
ok $? "usage: an unknown option exits 2"
adm >/dev/null 2>&1; rc=$?
[ $rc -eq 2 ]
ok $? "usage: no command exits 2"
out=$(adm --db "host=$work/nowhere port=1 dbname=kmdc connect_timeout=2" list 2>&1); rc=$?
[ $rc -eq 1 ] && [[ $out == "kmdcadm: database unavailable"* ]]
ok $? "db: an unreachable database fails with exit 1 and says so"
q -c "CREATE DATABASE kmdc_empty" >/dev/null
out=$(PGDATABASE=kmdc_empty adm list 2>&1); rc=$?
[ $rc -eq 1 ] && [[ $out == *"kmdcadm migrate"* ]]
ok $? "db: a database without the schema asks for kmdcadm migrate"

tap_done
