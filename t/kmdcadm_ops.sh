#!/usr/bin/env bash
# t/kmdcadm_ops.sh - kmdcadm setup, resync, rekey, purge and audit against a private
# PostgreSQL cluster, printing TAP.
#
#   t/kmdcadm_ops.sh [BUILDDIR | PATH-TO-KMDCADM]     (or env KMDCADM=PATH)
#
# Starts a cluster with t/pgcluster under a mktemp folder (stopped and removed
# on exit).  Cards are issued with the built kmdcadm; the rest of the state
# (messages, deliveries, uploads, receipts, nonces with old timestamps) is
# built directly with SQL, since none of it needs the service.  The stored
# chain keys are checked independently of libkmdc with Python's cryptography
# package when it is installed (docs/PROTOCOL.md section 8 wrapping, section 2 chain step).
# Exit status non-zero on any failure.
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

work=$(mktemp -d /tmp/kmdcadm-ops.XXXXXX) || bail "mktemp failed"
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
ok $rc "pgcluster: a private cluster starts"
[ $rc -eq 0 ] || bail "no PostgreSQL cluster"
eval "$envline"
export PGHOST PGPORT PGDATABASE PGUSER
unset PGSERVICE PGOPTIONS PGPASSWORD

export KMDC_SQLDIR="$top/sql"
q() { psql -X -q -At -v ON_ERROR_STOP=1 "$@" 2>&1; }
adm() { "$kmdcadm" "$@"; }
URL=https://dc.example/kmdc

adm migrate >/dev/null 2>&1 || bail "kmdcadm migrate failed"
adm keygen --out "$work/mk1.key" >/dev/null 2>&1 || bail "keygen failed"
adm keygen --out "$work/mk2.key" >/dev/null 2>&1 || bail "keygen failed"
K1="--master-key 1:$work/mk1.key"
K2="--master-key 2:$work/mk2.key"

# issue ADDRESS KEYS... : issue a card, print its serial in decimal
issue() {
    local addr=$1 out s
    shift
    out=$(adm "$@" issue --address "$addr" --url "$URL" --out "$work/$addr.card" 2>&1) || {
        diag "issue $addr: $out"; return 1; }
    s=$(printf '%s\n' "$out" | sed -n 's/^serial: \([0-9a-f]\{16\}\)$/\1/p')
    echo $((16#$s))
}
hex() { printf '%016x' "$1"; }
wrapped() {   # wrapped SERIAL COLUMN: the stored value in hex
    q -c "SELECT encode($2, 'hex') FROM cards WHERE serial = $1"
}
counters() { q -c "SELECT up_next || '/' || down_next FROM cards WHERE serial = $1"; }
audit_rows() { q -c "SELECT count(*) FROM audit_log WHERE event = '$1'"; }

# An independent reader of docs/PROTOCOL.md section 8 wrapped values and the section 2 chain step.
have_py=0
if python3 -c 'import cryptography.hazmat.primitives.ciphers.aead' 2>/dev/null; then
    have_py=1
    cat >"$work/chain.py" <<'EOF'
import hashlib, hmac, struct, sys
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

def unwrap(keyfile, wrapped_hex, serial, field, counter):
    master = bytes.fromhex(open(keyfile).read().strip())
    w = bytes.fromhex(wrapped_hex)
    kid, salt, ct = w[:4], w[4:28], w[28:]
    k = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt,
             info=b"KMDC/1 wrap").derive(master)
    aad = (b"KMDC/1 wrap" + kid + struct.pack(">Q", serial) + field.encode()
           + struct.pack(">Q", counter))
    return AESGCM(k).decrypt(b"\0" * 12, ct, aad)

def step(ck, times):
    for _ in range(times):
        ck = hmac.new(ck, b"\x02", hashlib.sha256).digest()
    return ck

# chain.py KEYFILE SERIAL FIELD OLDHEX OLDCOUNTER NEWHEX NEWCOUNTER
#   exit 0 when NEW unwraps to OLD stepped NEWCOUNTER - OLDCOUNTER times
if __name__ == "__main__":
    keyfile, serial, field = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    old = unwrap(keyfile, sys.argv[4], serial, field, int(sys.argv[5]))
    new = unwrap(keyfile, sys.argv[6], serial, field, int(sys.argv[7]))
    sys.exit(0 if step(old, int(sys.argv[7]) - int(sys.argv[5])) == new else 1)
EOF
fi

# --- resync ----------------------------------------------------------------------
rs=$(issue rita $K1) || bail "issue failed"
rh=$(hex "$rs")
up0=$(wrapped "$rs" up_chain); down0=$(wrapped "$rs" down_chain); ak0=$(wrapped "$rs" auth_key)
out=$(adm $K1 resync "$rh" --up 5 --down 3 2>&1); rc=$?
[ $rc -eq 0 ] && [ "$(counters "$rs")" = 5/3 ] && [[ $out == *"up_next 0 -> 5"* ]] \
    && [[ $out == *"down_next 0 -> 3"* ]]
ok $? "resync: --up 5 --down 3 moves both counters forward"
[ $rc -eq 0 ] || diag "$out"
up1=$(wrapped "$rs" up_chain); down1=$(wrapped "$rs" down_chain)
[ "$up1" != "$up0" ] && [ "$down1" != "$down0" ] && [ "$(wrapped "$rs" auth_key)" = "$ak0" ] \
    && [ ${#up1} -eq 152 ] && [ ${#down1} -eq 152 ]
ok $? "resync: both wrapped chain keys changed, auth_key did not"
if [ $have_py -eq 1 ]; then
    python3 "$work/chain.py" "$work/mk1.key" "$rs" up_chain "$up0" 0 "$up1" 5 \
        && python3 "$work/chain.py" "$work/mk1.key" "$rs" down_chain "$down0" 0 "$down1" 3
    ok $? "resync: the stored chains are CK_5 and CK_3 of the issued chains, wrapped at 5 and 3"
else
    skip "python3 cryptography not installed: chain keys not checked independently"
fi
out=$(adm $K1 resync "$rh" --up 4 2>&1); rc=$?
[ $rc -eq 1 ] && [[ $out == *"never moves a counter back"* ]] && [ "$(counters "$rs")" = 5/3 ] \
    && [ "$(wrapped "$rs" up_chain)" = "$up1" ]
ok $? "resync: moving up_next back is refused, nothing changes"
out=$(adm $K1 resync "$rh" --up 6 --down 2 2>&1); rc=$?
[ $rc -eq 1 ] && [ "$(counters "$rs")" = 5/3 ] && [ "$(wrapped "$rs" up_chain)" = "$up1" ]
ok $? "resync: one chain refused leaves the other unchanged too (one transaction)"
out=$(adm $K1 resync "$rh" --down $((3 + 1048576 + 1)) 2>&1); rc=$?
[ $rc -eq 1 ] && [[ $out == *"1048576 steps"* ]] && [ "$(counters "$rs")" = 5/3 ]
ok $? "resync: more than 2^20 steps ahead is refused"
out=$(adm $K1 resync "$rh" --up 9223372036854775808 2>&1); rc=$?
[ $rc -eq 2 ] && [ "$(counters "$rs")" = 5/3 ]
ok $? "resync: a counter past 2^63-1 is a usage error"
adm $K1 resync "$rh" >/dev/null 2>&1; r1=$?
adm resync "$rh" --up 7 >/dev/null 2>&1; r2=$?
adm $K1 resync "$rh" --up -1 >/dev/null 2>&1; r3=$?
[ $r1 -eq 2 ] && [ $r2 -eq 2 ] && [ $r3 -eq 2 ]
ok $? "resync: no --up/--down, no --master-key or a negative counter are usage errors"
before=$(audit_rows card.resynced)
out=$(adm $K1 resync "$rh" --up 5 2>&1); rc=$?
[ $rc -eq 0 ] && [[ $out == *unchanged* ]] && [ "$(wrapped "$rs" up_chain)" = "$up1" ] \
    && [ "$(audit_rows card.resynced)" = "$before" ]
ok $? "resync: a counter already at N is left as it is (no new audit row)"
t0=$(date +%s.%N)
out=$(adm $K1 $K2 resync "$rh" --down $((3 + 1048576)) 2>&1); rc=$?
t1=$(date +%s.%N)
down2=$(wrapped "$rs" down_chain)
[ $rc -eq 0 ] && [ "$(counters "$rs")" = "5/$((3 + 1048576))" ] && [ "${down2:0:8}" = 00000002 ]
ok $? "resync: exactly 2^20 steps are allowed; the result is wrapped under the newest key"
diag "2^20 chain steps took $(echo "$t1 - $t0" | bc 2>/dev/null || echo '?') s"
if [ $have_py -eq 1 ]; then
    # the old value is under key 1, the new one under key 2
    python3 - "$work" "$rs" "$down1" "$down2" $((3 + 1048576)) <<'EOF'
import sys
sys.path.insert(0, sys.argv[1])
import chain
work, serial, to = sys.argv[1], int(sys.argv[2]), int(sys.argv[5])
old = chain.unwrap(work + "/mk1.key", sys.argv[3], serial, "down_chain", 3)
new = chain.unwrap(work + "/mk2.key", sys.argv[4], serial, "down_chain", to)
sys.exit(0 if chain.step(old, to - 3) == new else 1)
EOF
    ok $? "resync: the 2^20-step chain matches an independent computation"
else
    skip "python3 cryptography not installed"
fi
out=$(adm $K1 resync "$rh" --down $((3 + 1048577)) 2>&1); rc=$?
[ $rc -eq 1 ] && [[ $out == *"--master-key 2:FILE"* ]] && [ "$(counters "$rs")" = "5/$((3 + 1048576))" ]
ok $? "resync: a value under a key that was not given is refused, naming the key id"
out=$(adm $K1 resync "$rh" --up 6 2>&1); rc=$?
[ $rc -eq 1 ] && [[ $out == *"newer than the newest key given"* ]] \
    && [ "$(counters "$rs")" = "5/$((3 + 1048576))" ] && [ "$(wrapped "$rs" up_chain)" = "$up1" ]
ok $? "resync: never rewraps under an older key than the card already uses"
adm $K1 resync 0000000000000001 --up 1 >/dev/null 2>&1; rc=$?
[ $rc -eq 1 ]
ok $? "resync: an unknown serial fails with exit 1"
[ "$(q -c "SELECT string_agg((detail->>'chain') || ':' || (detail->>'from') || '>' || (detail->>'to'), ',' ORDER BY id)
           FROM audit_log WHERE serial = $rs AND event = 'card.resynced'")" = "up:0>5,down:0>3,down:3>1048579" ]
ok $? "resync: one card.resynced audit row per chain moved, with from and to"
vs=$(issue vera $K1) || bail "issue failed"
adm revoke "$(hex "$vs")" >/dev/null 2>&1
out=$(adm $K1 resync "$(hex "$vs")" --up 1 2>&1); rc=$?
[ $rc -eq 1 ] && [[ $out == *revoked* ]] && [ "$(counters "$vs")" = 0/0 ]
ok $? "resync: a revoked card is refused"

# --- rekey -----------------------------------------------------------------------
# alice (and rita): issued, live access code; bob: activated; carol: code expired
as=$(issue alice $K1) && bs=$(issue bob $K1) && cs=$(issue carol $K1) || bail "issue failed"
q -c "UPDATE cards SET status = 'active', activated_at = now(), access_mac = NULL,
             access_expires = NULL WHERE serial = $bs" >/dev/null
q -c "UPDATE cards SET access_expires = now() - interval '1 day' WHERE serial = $cs" >/dev/null
out=$(adm $K1 $K2 rekey --check 2>&1); rc=$?
[ $rc -eq 1 ] && [[ $out == *"master key id 1: "*"wrapped values"* ]] && [[ $out == *"still needed"* ]]
ok $? "rekey --check: before rekey exits 1 and lists id 1 in use"
[ $rc -eq 1 ] || diag "$out"
out=$(adm $K2 rekey --check 2>&1); rc=$?
[ $rc -eq 1 ]
ok $? "rekey --check: before rekey, with only key 2, exits 1"
snap=$(q -c "SELECT md5(string_agg(encode(up_chain || down_chain || auth_key, 'hex') || key_id, ',' ORDER BY serial)) FROM cards")
out=$(adm $K2 rekey 2>&1); rc=$?
[ $rc -eq 1 ] && [[ $out == *"--master-key 1:FILE"* ]] \
    && [ "$(q -c "SELECT md5(string_agg(encode(up_chain || down_chain || auth_key, 'hex') || key_id, ',' ORDER BY serial)) FROM cards")" = "$snap" ]
ok $? "rekey: without the old key it fails, naming the id, and changes nothing"
adm rekey >/dev/null 2>&1; rc=$?
[ $rc -eq 2 ]
ok $? "rekey: no --master-key is a usage error"
ncards=$(q -c "SELECT count(*) FROM cards")
old_vals=$(q -c "SELECT count(*) FROM cards c, LATERAL (VALUES (up_chain), (down_chain), (auth_key)) v(w)
                 WHERE get_byte(w, 3) = 1")
out=$(adm $K1 $K2 rekey 2>&1); rc=$?
[ $rc -eq 0 ] && [[ $out == *"rewrapped $old_vals values of $ncards cards under master key id 2"* ]]
ok $? "rekey: rewraps every value still under key 1 ($old_vals values of $ncards cards)"
[ $rc -eq 0 ] || diag "$out"
[ "$(q -c "SELECT count(*) FROM cards WHERE substr(encode(up_chain, 'hex'), 1, 8) = '00000002'
                                        AND substr(encode(down_chain, 'hex'), 1, 8) = '00000002'
                                        AND substr(encode(auth_key, 'hex'), 1, 8) = '00000002'")" = "$ncards" ]
ok $? "rekey: every wrapped value now names key id 2"
[ "$(q -c "SELECT string_agg(key_id::text, ',' ORDER BY serial = $as DESC, serial = $bs DESC)
           FROM cards WHERE serial IN ($as, $bs, $cs)")" = "1,2,2" ]
ok $? "rekey: key_id stays 1 only for the card whose access code can still be used"
[[ $out == *"master key id 1: 2 access codes not yet used"* ]] && [[ $out == *"keep its file"* ]]
ok $? "rekey: reports the two live access codes under key 1 and says to keep that key"
[ $rc -eq 0 ] || diag "$out"
if [ $have_py -eq 1 ]; then
    python3 - "$work" "$rs" "$up1" "$(wrapped "$rs" up_chain)" <<'EOF'
import sys
sys.path.insert(0, sys.argv[1])
import chain
work, serial = sys.argv[1], int(sys.argv[2])
a = chain.unwrap(work + "/mk1.key", sys.argv[3], serial, "up_chain", 5)
b = chain.unwrap(work + "/mk2.key", sys.argv[4], serial, "up_chain", 5)
sys.exit(0 if a == b else 1)
EOF
    ok $? "rekey: a rewrapped chain key is the same key, now under key 2 at the same counter"
else
    skip "python3 cryptography not installed"
fi
out=$(adm $K2 rekey --check 2>&1); rc=$?
[ $rc -eq 1 ] && [[ $out == *"access code"* ]] && [[ $out == *"master key id 2: $((ncards * 3)) wrapped values"* ]]
ok $? "rekey --check: with a live access code under key 1 it still exits 1"
q -c "UPDATE cards SET status = 'active', activated_at = now(), access_mac = NULL,
             access_expires = NULL WHERE serial IN ($as, $rs)" >/dev/null
out=$(adm $K2 rekey --check 2>&1); rc=$?
[ $rc -eq 0 ] && [[ $out == *"only master key id 2 is needed"* ]] \
    && [[ $out == *"$((ncards * 3)) wrapped values unwrap"* ]]
ok $? "rekey --check: with only key 2 exits 0 once nothing needs key 1"
[ $rc -eq 0 ] || diag "$out"
cp "$work/mk1.key" "$work/wrong2.key"
out=$(adm --master-key "2:$work/wrong2.key" rekey --check 2>&1); rc=$?
[ $rc -eq 1 ] && [[ $out == *"does not unwrap under master key id 2"* ]]
ok $? "rekey --check: a wrong file for key id 2 is caught (values do not unwrap)"
out=$(adm $K2 rekey 2>&1); rc=$?
[ $rc -eq 0 ] && [[ $out == *"rewrapped 0 values of 0 cards"* ]] \
    && [ "$(q -c "SELECT count(*) FROM cards WHERE key_id <> 2")" = 0 ]
ok $? "rekey: a second run rewraps nothing and moves the remaining key_id to 2"
out=$(adm show "$(hex "$as")" 2>&1); rc=$?
[ $rc -eq 0 ] && printf '%s\n' "$out" | grep -qE '^key_id +2$'
ok $? "show: works after the rekey"
ds=$(issue dora $K2); rc=$?
[ $rc -eq 0 ] && [ "$(q -c "SELECT key_id FROM cards WHERE serial = ${ds:-0}")" = 2 ] \
    && [ "$(wrapped "${ds:-0}" up_chain | cut -c1-8)" = 00000002 ]
ok $? "issue: works with only key 2"
out=$(adm $K2 resync "$(hex "$ds")" --up 2 2>&1); rc=$?
[ $rc -eq 0 ] && [ "$(counters "$ds")" = 2/0 ]
ok $? "resync: works with only key 2 after the rekey"
[ "$(q -c "SELECT count(*) FROM audit_log WHERE event = 'master.rekeyed' AND serial IS NULL
           AND (detail->>'key_id')::int = 2 AND detail ? 'cards'")" = 2 ]
ok $? "rekey: one master.rekeyed audit row per run, with key_id and cards"

# --- purge -------------------------------------------------------------------------
S=$bs   # sender
R=$cs   # recipient
HEAD="decode(repeat('00', 120), 'hex')"
q -c "
INSERT INTO uploads (id, created_at) VALUES
  (1, now()), (2, now()), (3, now() - interval '40 days'), (4, now() - interval '2 hours'),
  (5, now() - interval '10 minutes'), (6, now() - interval '40 days'), (7, now() - interval '40 days'),
  (9, now() - interval '2 hours');
-- the purge goes by the last batch: 9 is an old upload still streaming
UPDATE uploads SET touched_at = created_at WHERE id <> 9;
UPDATE uploads SET touched_at = now() - interval '1 minute' WHERE id = 9;
INSERT INTO upload_chunks (upload_id, idx, data) VALUES
  (1, 0, '\\x00'), (2, 0, '\\x00'), (4, 0, '\\x00'), (4, 1, '\\x00'), (5, 0, '\\x00'), (6, 0, '\\x00'),
  (9, 0, '\\x00');
INSERT INTO messages (id, sender, sender_seq, upload_id, size, payload_len, created_at) VALUES
  (101, $S, 1, 1, 1, 17, now()),
  (102, $S, 2, 2, 1, 17, now()),
  (103, $S, 3, 3, 1, 17, now() - interval '40 days'),
  (104, $S, 4, NULL, 1, 17, now() - interval '40 days'),
  (105, $S, 5, 6, 1, 17, now() - interval '40 days'),
  (106, $S, 6, 7, 1, 17, now() - interval '40 days');
-- payloads kept in the message's row (schema 6): of an expired delivery, of a
-- queued one, of one acknowledged whose payload is still there
INSERT INTO messages (id, sender, sender_seq, upload_id, size, payload_len, created_at, payload) VALUES
  (110, $S, 10, NULL, 1, 2, now(), '\\x0110'),
  (111, $S, 11, NULL, 1, 2, now(), '\\x0111'),
  (112, $S, 12, NULL, 1, 2, now(), '\\x0112');
INSERT INTO deliveries (id, message_id, recipient, seq, head, state, created_at, acked_at, expires_at) VALUES
  (1, 101, $R, 1, $HEAD, 'queued', now(), NULL, now() - interval '1 hour'),
  (2, 102, $R, 2, $HEAD, 'queued', now(), NULL, now() + interval '1 day'),
  (3, 102, $S, 1, NULL, 'delivered', now(), now() - interval '1 hour', now() + interval '1 day'),
  (4, 103, $R, 3, NULL, 'delivered', now() - interval '40 days', now() - interval '40 days', now() - interval '33 days'),
  (5, 104, $R, 4, NULL, 'expired', now() - interval '40 days', NULL, now() - interval '35 days'),
  (6, 105, $R, 5, $HEAD, 'queued', now() - interval '40 days', NULL, now() - interval '35 days'),
  (7, 106, $R, 6, $HEAD, 'queued', now() - interval '40 days', NULL, now() + interval '1 day'),
  (10, 110, $R, 10, $HEAD, 'queued', now(), NULL, now() - interval '1 hour'),
  (11, 111, $R, 11, $HEAD, 'queued', now(), NULL, now() + interval '1 day'),
  (12, 112, $R, 12, NULL, 'delivered', now(), now() - interval '1 hour', now() + interval '1 day');
INSERT INTO receipts (serial, seq, envelope_sha256, http_status, answer, message_id, created_at) VALUES
  ($S, 3, decode(repeat('03', 32), 'hex'), 201, '{}', 103, now() - interval '40 days'),
  ($S, 4, decode(repeat('04', 32), 'hex'), 201, '{}', 104, now() - interval '1 day'),
  ($S, 7, decode(repeat('07', 32), 'hex'), 403, '{}', NULL, now() - interval '3 days'),
  ($S, 8, decode(repeat('08', 32), 'hex'), 403, '{}', NULL, now() - interval '1 hour');
INSERT INTO request_nonces (serial, nonce, seen_at) VALUES
  ($S, '\\x01', now() - interval '20 minutes'), ($S, '\\x02', now() - interval '1 minute');
" >/dev/null || bail "could not build the purge state"
tables() {
    q -c "SELECT (SELECT string_agg(id::text, ',' ORDER BY id) FROM uploads) || ' | ' ||
                 (SELECT string_agg(upload_id || '.' || idx, ',' ORDER BY upload_id, idx) FROM upload_chunks) || ' | ' ||
                 (SELECT string_agg(id::text, ',' ORDER BY id) FROM messages) || ' | ' ||
                 (SELECT string_agg(id || ':' || state || ':' || (head IS NULL)::text, ',' ORDER BY id) FROM deliveries) || ' | ' ||
                 (SELECT string_agg(seq::text, ',' ORDER BY seq) FROM receipts) || ' | ' ||
                 (SELECT string_agg(encode(nonce, 'hex'), ',' ORDER BY nonce) FROM request_nonces)"
}
state0=$(tables)
expect_counts="expired 3,uploads 5,orphans 1,receipts 2,nonces 1,tombstones 3,messages 2"
counts_of() { printf '%s\n' "$1" | grep -E '^[a-z]+ +[0-9]+$' | sed 's/  */ /' | paste -sd, -; }
out=$(adm purge --dry-run 2>&1); rc=$?
[ $rc -eq 0 ] && [ "$(counts_of "$out")" = "$expect_counts" ] && [[ $out == *"dry run"* ]]
ok $? "purge --dry-run: counts per kind ($expect_counts)"
[ "$(counts_of "$out")" = "$expect_counts" ] || diag "$out"
[ "$(tables)" = "$state0" ] && [ "$(audit_rows db.purged)" = 0 ]
ok $? "purge --dry-run: changes nothing and writes no audit row"
out=$(adm purge --dry-run --tombstone-age 45d --receipt-age 50d 2>&1); rc=$?
[ $rc -eq 0 ] && [ "$(counts_of "$out")" = "expired 3,uploads 5,orphans 1,receipts 0,nonces 1,tombstones 0,messages 0" ]
ok $? "purge --dry-run: --tombstone-age and --receipt-age move the horizons"
out=$(adm purge 2>&1); rc=$?
[ $rc -eq 0 ] && [ "$(counts_of "$out")" = "$expect_counts" ]
ok $? "purge: removes what the dry run counted"
[ $rc -eq 0 ] || diag "$out"
IFS='|' read -r t_up t_chunks t_msg t_del t_rc t_nonce <<<"$(tables)"
[ "$(echo $t_up)" = "2,5,7,9" ]
ok $? "purge: uploads kept: the one with a queued delivery, the young orphan, the old message still queued, the old upload that received a batch a minute ago"
[ "$(echo $t_chunks)" = "2.0,5.0,9.0" ]
ok $? "purge: upload_chunks went with their uploads"
[ "$(echo $t_msg)" = "101,102,104,106,110,111,112" ]
ok $? "purge: messages kept: with a delivery, with a receipt; the others went"
[ "$(echo $t_del)" = "1:expired:true,2:queued:false,3:delivered:true,7:queued:false,10:expired:true,11:queued:false,12:delivered:true" ]
ok $? "purge: the expired delivery is a tombstone, queued ones kept, old tombstones gone"
[ "$(echo $t_rc)" = "4,8" ] \
    && [ "$(q -c "SELECT message_id FROM receipts WHERE seq = 4")" = 104 ]
ok $? "purge: receipts younger than 2 days kept (with their message)"
[ "$(echo $t_nonce)" = "02" ]
ok $? "purge: nonces older than 600 s gone, the recent one kept"
[ "$(q -c "SELECT upload_id IS NULL FROM messages WHERE id = 101")" = t ] \
    && [ "$(q -c "SELECT upload_id FROM messages WHERE id = 102")" = 2 ]
ok $? "purge: a message whose deliveries are all done lost its payload, one still queued kept it"
[ "$(q -c "SELECT string_agg(id || ':' || coalesce(encode(payload, 'hex'), '-'), ',' ORDER BY id)
           FROM messages WHERE id >= 110")" = "110:-,111:0111,112:-" ]
ok $? "purge: a payload in the message's row goes likewise (expired, acknowledged), a queued one's stays"
[ "$(q -c "SELECT (detail->>'expired') || ',' || (detail->>'uploads') || ',' || (detail->>'orphans') || ',' ||
                  (detail->>'receipts') || ',' || (detail->>'nonces') || ',' || (detail->>'tombstones') || ',' ||
                  (detail->>'messages') FROM audit_log WHERE event = 'db.purged'")" = "3,5,1,2,1,3,2" ]
ok $? "purge: one db.purged audit row with the counts"
state1=$(tables)
out=$(adm purge 2>&1); rc=$?
[ $rc -eq 0 ] && [ "$(counts_of "$out")" = "expired 0,uploads 0,orphans 0,receipts 0,nonces 0,tombstones 0,messages 0" ] \
    && [ "$(tables)" = "$state1" ] && [ "$(audit_rows db.purged)" = 1 ]
ok $? "purge: a second run finds nothing and writes no audit row"
adm purge --receipt-age 1h >/dev/null 2>&1; r1=$?
adm purge --nonce-age 60 >/dev/null 2>&1; r2=$?
adm purge --tombstone-age soon >/dev/null 2>&1; r3=$?
adm purge extra >/dev/null 2>&1; r4=$?
[ $r1 -eq 2 ] && [ $r2 -eq 2 ] && [ $r3 -eq 2 ] && [ $r4 -eq 2 ]
ok $? "purge: ages below their floor, bad durations and operands are usage errors"
# hold_start SQL: run SQL in an open transaction of another session (as the
# service would) until hold_end COMMIT|ROLLBACK.
hold_start() {
    rm -f "$work/hold"
    mkfifo "$work/hold"
    ( { echo "BEGIN; $1"; cat "$work/hold"; } | psql -X -q -At -v ON_ERROR_STOP=1 \
        >"$work/hold.out" 2>&1 ) &
    holder=$!
    exec 7>"$work/hold"
    for _ in $(seq 100); do
        [ "$(q -c "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'psql'
                   AND state = 'idle in transaction'")" != 0 ] && return 0
        sleep 0.1
    done
    return 1
}
hold_end() { echo "$1;" >&7; exec 7>&-; wait "$holder"; }
# A row the service holds is skipped, not waited for.
q -c "INSERT INTO request_nonces (serial, nonce, seen_at) VALUES ($S, '\\x03', now() - interval '1 hour'),
                                                               ($S, '\\x04', now() - interval '1 hour')" >/dev/null
hold_start "SELECT 1 FROM request_nonces WHERE nonce = '\\x03' FOR UPDATE;"; h=$?
out=$(timeout 20 "$kmdcadm" purge 2>&1); rc=$?
hold_end ROLLBACK
[ $h -eq 0 ] && [ $rc -eq 0 ] && [ "$(counts_of "$out" | sed 's/.*nonces \([0-9]*\).*/\1/')" = 1 ] \
    && [ "$(q -c "SELECT string_agg(encode(nonce, 'hex'), ',' ORDER BY nonce) FROM request_nonces")" = "02,03" ]
ok $? "purge: a row locked by another session is skipped, not waited for"
# An intake publishing its message for an old upload at the moment purge runs.
q -c "INSERT INTO uploads (id, created_at, touched_at) VALUES (8, now() - interval '2 hours', now() - interval '2 hours');
      INSERT INTO upload_chunks (upload_id, idx, data) VALUES (8, 0, '\\x00')" >/dev/null
hold_start "INSERT INTO messages (id, sender, sender_seq, upload_id, size, payload_len)
            VALUES (107, $S, 7, 8, 1, 17);"; h=$?
out=$(timeout 20 "$kmdcadm" purge 2>&1); rc=$?
hold_end COMMIT
[ $h -eq 0 ] && [ $rc -eq 0 ] && [[ $(counts_of "$out") == *"orphans 0"* ]] \
    && [ "$(q -c "SELECT upload_id FROM messages WHERE id = 107")" = 8 ] \
    && [ "$(q -c "SELECT count(*) FROM upload_chunks WHERE upload_id = 8")" = 1 ]
ok $? "purge: an upload whose message is being published at that moment is kept"
[ $rc -eq 0 ] || diag "$out" "$(cat "$work/hold.out")"

# --- audit -------------------------------------------------------------------------
out=$(adm audit 2>&1); rc=$?
first=$(printf '%s\n' "$out" | sed -n 2p)
[ $rc -eq 0 ] && printf '%s\n' "$out" | head -n1 | grep -qE '^AT +SERIAL +EVENT +DETAIL$' \
    && [[ $first == *db.purged* ]] \
    && printf '%s\n' "$out" | grep -qE '^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:]{8}Z +- +master\.rekeyed +\{' \
    && printf '%s\n' "$out" | grep -qE " $rh +card\.resynced " \
    && printf '%s\n' "$out" | grep -qE " +card\.issued " \
    && printf '%s\n' "$out" | grep -qE " +card\.revoked "
ok $? "audit: lists the events newest first (purge, rekey, resync, issue, revoke)"
[ $rc -eq 0 ] || diag "$out"
! printf '%s\n' "$out" | grep -qiE 'alice|bob|carol|rita|vera|dora'
ok $? "audit: no address in the output"
out=$(adm audit --serial "$rh" 2>&1); rc=$?
[ $rc -eq 0 ] && [ "$(printf '%s\n' "$out" | tail -n +2 | grep -vc " $rh ")" = 0 ] \
    && [ "$(printf '%s\n' "$out" | tail -n +2 | wc -l)" = 4 ]
ok $? "audit --serial: only that card's rows (issued, 3 resyncs)"
[ $rc -eq 0 ] || diag "$out"
out=$(adm audit --json --limit 3 2>&1); rc=$?
[ $rc -eq 0 ] && printf '%s' "$out" | python3 -c '
import json, sys
rows = json.load(sys.stdin)
assert len(rows) == 3, rows
assert all(set(r) == {"id", "at", "serial", "event", "detail"} for r in rows)
assert rows[0]["event"] == "db.purged" and rows[0]["serial"] is None
assert isinstance(rows[0]["detail"], dict) and rows[0]["detail"]["nonces"] == 1
assert [r["id"] for r in rows] == sorted((r["id"] for r in rows), reverse=True)'
ok $? "audit --json --limit 3: a JSON array of the three newest rows"
total=$(q -c "SELECT count(*) FROM audit_log")
n_all=$(adm audit --limit 0 | tail -n +2 | wc -l)
n_since=$(adm audit --limit 0 --since 1h | tail -n +2 | wc -l)
n_old=$(adm audit --limit 0 --since 2000-01-01 | tail -n +2 | wc -l)
n_future=$(adm audit --since '2999-01-01 00:00:00+00' | tail -n +2 | wc -l)
n_def=$(adm audit | tail -n +2 | wc -l)
[ "$n_all" = "$total" ] && [ "$n_since" = "$total" ] && [ "$n_old" = "$total" ] \
    && [ "$n_future" = 0 ] && [ "$n_def" -le 100 ]
ok $? "audit --since: a duration or a date filters; --limit 0 prints all ($total rows)"
q -c "UPDATE audit_log SET at = now() - interval '3 days' WHERE event = 'card.issued'" >/dev/null
n_issued=$(adm audit --limit 0 --since 2d | grep -c ' card\.issued ')
[ "$n_issued" = 0 ] && [ "$(adm audit --limit 0 --since 4d | grep -c ' card\.issued ')" -gt 0 ]
ok $? "audit --since 2d: leaves out older rows"
adm audit --since garbage >/dev/null 2>&1; r1=$?
adm audit --limit x >/dev/null 2>&1; r2=$?
adm audit --serial zz >/dev/null 2>&1; r3=$?
[ $r1 -eq 2 ] && [ $r2 -eq 2 ] && [ $r3 -eq 2 ]
ok $? "audit: a bad --since, --limit or --serial is a usage error"

# (after the audit checks, which expect the purges above to be the newest)
# A payload kept in its message's row, whose message an acknowledgement holds
# locked at that moment: skipped, not waited for; taken by the next run.
q -c "INSERT INTO messages (id, sender, sender_seq, size, payload_len, payload)
      VALUES (113, $S, 13, 1, 2, '\\x0113');
      INSERT INTO deliveries (id, message_id, recipient, seq, head, state, acked_at, expires_at)
      VALUES (13, 113, $R, 13, NULL, 'delivered', now(), now() + interval '1 day')" >/dev/null \
    || bail "could not add message 113"
hold_start "SELECT 1 FROM messages WHERE id = 113 FOR NO KEY UPDATE;"; h=$?
out=$(timeout 20 "$kmdcadm" purge 2>&1); rc=$?
kept=$(q -c "SELECT payload IS NOT NULL FROM messages WHERE id = 113")
hold_end ROLLBACK
out2=$(timeout 20 "$kmdcadm" purge 2>&1)
[ $h -eq 0 ] && [ $rc -eq 0 ] && [ "$kept" = t ] && [[ $(counts_of "$out2") == *"uploads 1"* ]] \
    && [ "$(q -c "SELECT payload IS NULL FROM messages WHERE id = 113")" = t ]
ok $? "purge: a payload whose message another session holds is skipped, then taken by the next run"
[ "$(q -c "SELECT payload IS NULL FROM messages WHERE id = 113")" = t ] || diag "h=$h rc=$rc kept=$kept" "$out" "$out2" "$(cat "$work/hold.out")"

# --- setup -------------------------------------------------------------------------
# One step from a superuser's connection to a database the module can use:
# roles, database, schema, least-privilege grants, master key; twice.
sk="$work/setup-keys"
setup() {
    adm setup --database kmdc_st --owner kmdc_st_owner --httpd-role kmdc_st_httpd \
        --key-dir "$sk" --admin-user root "$@" 2>&1
}
out1=$(setup); rc=$?
[ $rc -eq 0 ] && [[ $out1 == *"role kmdc_st_owner: created"* ]] \
    && [[ $out1 == *"role kmdc_st_httpd: created"* ]] \
    && [[ $out1 == *"database kmdc_st: created, owned by kmdc_st_owner"* ]] \
    && [[ $out1 == *"schema is now at version 6"* ]] \
    && [[ $out1 == *"master key $sk/master-1.key: created"* ]]
ok $? "setup: creates the roles, the database, the schema and a master key, saying so"
[ $rc -eq 0 ] || diag "$out1"
printf '%s\n' "$out1" | grep -qxF "    KmdcDatabase \"host=$PGHOST port=$PGPORT dbname=kmdc_st user=kmdc_st_httpd\"" \
    && printf '%s\n' "$out1" | grep -qxF "    KmdcMasterKey 1 $sk/master-1.key"
ok $? "setup: prints the KmdcDatabase and KmdcMasterKey lines to use"
[ "$(stat -c %a:%U "$sk")" = "700:$(id -un)" ] \
    && [ "$(stat -c %a:%U "$sk/master-1.key")" = "600:$(id -un)" ] \
    && [ "$(wc -c <"$sk/master-1.key")" -eq 65 ]
ok $? "setup: the key folder is 0700 and the key 0600, owned by the user running it"
key_sum=$(sha256sum <"$sk/master-1.key")
out2=$(setup); rc=$?
[ $rc -eq 0 ] && [[ $out2 != *created* ]] && [[ $out2 == *"schema is up to date at version 6"* ]] \
    && [[ $out2 == *"master key $sk/master-1.key: exists"* ]] \
    && [ "$(sha256sum <"$sk/master-1.key")" = "$key_sum" ]
ok $? "setup: a second run creates nothing and keeps the key"
[ $rc -eq 0 ] || diag "$out2"
[ "$(q -d kmdc_st -c "SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tableowner <> 'kmdc_st_owner'")" = 0 ] \
    && [ "$(q -d kmdc_st -c "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")" -gt 5 ]
ok $? "setup: every table belongs to the owner role"
[ "$(q -c "SELECT rolsuper::text || rolcreatedb::text || rolcreaterole::text FROM pg_roles WHERE rolname IN ('kmdc_st_owner', 'kmdc_st_httpd')" | sort -u)" = falsefalsefalse ]
ok $? "setup: neither role is a superuser or may create databases or roles"
# the httpd role: what the module does works, nothing more
asw() { psql -X -q -At -v ON_ERROR_STOP=1 -U kmdc_st_httpd -d kmdc_st -c "$1" 2>&1; }
[ "$(asw 'SELECT max(version) FROM schema_migrations')" = 6 ] \
    && asw "INSERT INTO audit_log (serial, event, detail) VALUES (1, 'setup.test', '{}')" >/dev/null \
    && asw "INSERT INTO request_nonces (serial, nonce) VALUES (1, '\\x00')" >/dev/null \
    && asw 'SELECT count(*) FROM cards' >/dev/null \
    && asw 'UPDATE cards SET up_next = up_next WHERE false' >/dev/null \
    && asw 'UPDATE cards SET queued_count = queued_count, queued_bytes = queued_bytes WHERE false' >/dev/null \
    && asw 'UPDATE messages SET payload = NULL WHERE false' >/dev/null
ok $? "setup: the httpd role reads the schema version and cards, writes the audit log, nonces, mailbox totals and clears payloads"
denied=0
for stmt in 'SELECT count(*) FROM audit_log' 'DELETE FROM receipts' 'DELETE FROM request_nonces' \
            "INSERT INTO cards (serial) VALUES (1)" "UPDATE cards SET address = 'x' WHERE false" \
            'DELETE FROM cards' 'CREATE TABLE kmdc_st_x (i int)' 'DELETE FROM deliveries' \
            'UPDATE messages SET upload_id = NULL WHERE false'; do
    o=$(asw "$stmt")
    case "$o" in *"permission denied"*) ;; *) denied=1; diag "not refused: $stmt: $o" ;; esac
done
ok $denied "setup: the httpd role may not read the audit log, delete receipts, nonces, cards or deliveries, write addresses or upload ids, or create tables"
q -c "CREATE ROLE kmdc_st_other LOGIN" >/dev/null
o=$(psql -X -q -At -U kmdc_st_other -d kmdc_st -c 'SELECT 1' 2>&1)
[[ $o == *"permission denied for database"* ]]
ok $? "setup: PUBLIC may not connect to the database"
grants_doc=$(sed -n '/^### Grants for the module/,/^## 3\./p' "$top/docs/ADMIN.md" \
    | sed -n '/^```sql$/,/^```$/p' | sed '1d;$d' | tr -s ' \n' ' ' | sed 's/ *; */;\n/g; s/^ //')
grants_adm=$(adm setup --print-grants | tr -s ' \n' ' ' | sed 's/ *; */;\n/g; s/^ //')
[ -n "$grants_adm" ] && [ "$grants_doc" = "$grants_adm" ]
ok $? "setup: its grants are exactly those of docs/ADMIN.md section 2"
[ "$grants_doc" = "$grants_adm" ] || diag "ADMIN.md: $grants_doc" "kmdcadm: $grants_adm"
o=$(PGUSER=kmdc_st_owner PGDATABASE=kmdc_st adm setup --no-key --database kmdc_st2 2>&1); rc=$?
[ $rc -eq 1 ] && [[ $o == *"needs a PostgreSQL superuser"* ]]
ok $? "setup: refused, exit 1, on a connection that is not a superuser's"
o=$(adm setup --no-key --database kmdc_st2 --owner postgres 2>&1); rc=$?
[ $rc -eq 1 ] && [[ $o == *"is a superuser"* ]] \
    && [ "$(q -c "SELECT count(*) FROM pg_database WHERE datname = 'kmdc_st2'")" = 0 ]
ok $? "setup: an existing superuser role is refused as the owner"
o=$(adm setup --no-key --database 'Kmdc;drop' 2>&1); rc=$?
[ $rc -eq 2 ]
ok $? "setup: a database or role name outside [a-z_][a-z0-9_]* is a usage error"
if id postgres >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ]; then
    o=$(env -u PGUSER "$kmdcadm" setup --no-key --database kmdc_st --owner kmdc_st_owner \
            --httpd-role kmdc_st_httpd --as postgres 2>&1); rc=$?
    [ $rc -eq 0 ] && [[ $o == *"as the system user postgres"* ]] \
        && [[ $o == *"schema is up to date at version 6"* ]]
    ok $? "setup --as postgres: the database part runs as that system user"
    [ $rc -eq 0 ] || diag "$o"
else
    skip "setup --as: needs root and a postgres user"
fi
# --peer-map last: its pg_hba.conf line makes kmdc_st peer-only
hba=$(q -c 'SHOW hba_file'); ident=$(q -c 'SHOW ident_file')
o1=$(setup --peer-map); rc1=$?
o2=$(setup --peer-map); rc2=$?
[ $rc1 -eq 0 ] && [ $rc2 -eq 0 ] \
    && [ "$(grep -cE '^kmdc +www-data +kmdc_st_httpd$' "$ident")" = 1 ] \
    && [ "$(grep -cE '^kmdc +root +kmdc_st_owner$' "$ident")" = 1 ] \
    && [ "$(grep -cE '^local +kmdc_st +kmdc_st_httpd,kmdc_st_owner +peer +map=kmdc$' "$hba")" = 1 ] \
    && [ "$(grep -vE '^[[:space:]]*(#|$)' "$hba" | head -1)" = "local kmdc_st kmdc_st_httpd,kmdc_st_owner peer map=kmdc" ] \
    && [[ $o2 == *"already in"* ]]
ok $? "setup --peer-map: adds the map and the pg_hba.conf line above the others, once"
[ $rc1 -eq 0 ] || diag "$o1"
sleep 1
o=$(psql -X -q -At -U kmdc_st_owner -d kmdc_st -c 'SELECT current_user' 2>&1)
o2=$(psql -X -q -At -U kmdc_st_httpd -d kmdc_st -c 'SELECT 1' 2>&1)
[ "$o" = kmdc_st_owner ] && [[ $o2 == *"authentication failed"* ]]
ok $? "setup --peer-map: root connects as the owner by peer, not as the httpd role"
[ "$o" = kmdc_st_owner ] || diag "$o" "$o2"

# --- usage -------------------------------------------------------------------------
for c in resync rekey purge audit; do
    out=$(adm "$c" --help 2>&1); rc=$?
    [ $rc -eq 0 ] && [[ $out == "Usage: kmdcadm"*"$c"* ]]
    ok $? "usage: kmdcadm $c --help exits 0"
done
out=$(adm --help 2>&1)
[[ $out == *"resync SERIAL"* ]] && [[ $out == *"rekey [--check]"* ]] && [[ $out == *"purge [--dry-run]"* ]] \
    && [[ $out == *"audit [--serial S]"* ]]
ok $? "usage: kmdcadm --help lists resync, rekey, purge and audit"
man_page="$top/docs/kmdcadm.8"
if [ -f "$man_page" ]; then
    missing=""
    for c in setup migrate keygen issue list show suspend resume revoke resync rekey purge audit; do
        grep -q "^\.SS $c\b" "$man_page" || missing="$missing $c"
    done
    for o in --db --master-key --sqldir --address --url --out --passphrase-file --force --status \
             --json --reason --up --down --check --dry-run --receipt-age --tombstone-age \
             --upload-age --nonce-age --serial --since --limit --database --owner --httpd-role \
             --httpd-user --admin-user --key-dir --no-key --peer-map --as --print-grants; do
        grep -qF -- "${o//-/\\-}" "$man_page" || missing="$missing $o"
    done
    [ -z "$missing" ]
    ok $? "kmdcadm(8): documents every command and option"
    [ -n "$missing" ] && diag "missing from kmdcadm.8:$missing"
    if command -v man >/dev/null 2>&1 && man --help 2>&1 | grep -q -- '--warnings'; then
        w=$(LC_ALL=C.UTF-8 MANWIDTH=80 man --warnings -l "$man_page" 2>&1 >/dev/null)
        [ -z "$w" ]
        ok $? "kmdcadm(8): man renders it without warnings"
        [ -z "$w" ] || diag "$w"
    else
        skip "man not installed"
    fi
else
    ok 1 "kmdcadm(8): docs/kmdcadm.8 exists"
fi

tap_done
