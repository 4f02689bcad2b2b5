#!/usr/bin/env bash
# t/client_tty.sh - what the kmdc client does for the person at the keyboard,
# without a datacenter, printing TAP:
#   - the card's passphrase asked on the terminal (driven through a pty with
#     python3's pty module): not echoed, three tries, `kmdc card passphrase`
#     to set (typed twice), change and remove it, and the message without a
#     terminal;
#   - passphrase files that group or others can read are refused;
#   - the NAME rules on receipt (a NAME starting with '.' or '-' is saved with
#     a '_' in front) and at sealing (invisible format characters refused);
#   - the access code checked before anything is sent;
#   - the progress line, forced with --progress and on a pty, with its
#     "publishing" state, and silent when stderr is not a terminal, against a
#     small loopback stand-in that answers POST /send after a pause.
#
#   t/client_tty.sh BUILDDIR        (or env KMDC=PATH-TO-kmdc)
#
# Needs a build configured with --enable-test-hooks (kmdc test-mkcard,
# test-seal-down) and python3.  Exit status non-zero on failure.
set -u

arg=${1:-}
if [ -n "$arg" ] && [ -d "$arg" ]; then
    kmdc="$arg/kmdc/kmdc"
elif [ -n "$arg" ]; then
    kmdc=$arg
elif [ -n "${KMDC:-}" ]; then
    kmdc=$KMDC
else
    here=$(cd "$(dirname "$0")" && pwd)
    kmdc="$here/../_build/kmdc/kmdc"
fi
case "$kmdc" in /*) ;; *) kmdc="$(pwd)/$kmdc" ;; esac

. "$(dirname "$0")/lib/tap.sh"

[ -x "$kmdc" ] || bail "kmdc not built at $kmdc (pass BUILDDIR or KMDC)"
"$kmdc" test-mkcard --help >/dev/null 2>&1 \
    || bail "kmdc was built without --enable-test-hooks (test-mkcard is missing)"
command -v python3 >/dev/null 2>&1 || bail "python3 is needed (scripts/check installs it)"

work=$(mktemp -d /tmp/kmdc-tty-test.XXXXXX) || bail "mktemp failed"
mockpid=
cleanup() {
    [ -n "$mockpid" ] && kill "$mockpid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
cd "$work" || bail "cd $work"
unset KMDC_CARD KMDC_PASSPHRASE_FILE KMDC_CRASH_AT
umask 022                        # files made here are 0644 unless chmod'ed

URL_DEAD=http://127.0.0.1:1/kmdc
field() { sed -n "s/^$1: //p"; }
keyof() { sed -n "s/^$1 //p" "$2"; }

# ptyrun.py SCRIPT -- ARGV...: run ARGV on a new pty; SCRIPT is a list of
# "expect TEXT" / "send TEXT" lines (send adds the Enter).  Prints what the
# terminal showed to pty.out and exits with the command's exit status (124
# when an expected text did not come within 10 s).
cat >ptyrun.py <<'PYEOF'
import os, pty, signal, sys, time, select
script, argv = sys.argv[1], sys.argv[sys.argv.index("--") + 1:]
steps = [l.rstrip("\n").split(" ", 1) for l in open(script) if l.strip()]
pid, fd = pty.fork()
if pid == 0:
    os.execv(argv[0], argv)
seen, pos, eof = b"", 0, False
def more(deadline):
    global seen, eof
    left = deadline - time.time()
    if eof or left <= 0:
        return False
    r, _, _ = select.select([fd], [], [], left)
    if not r:
        return False
    try:
        b = os.read(fd, 4096)
    except OSError:
        b = b""
    if not b:
        eof = True
        return False
    seen += b
    return True
rc = None
for verb, text in steps:
    if verb == "expect":         # in what came after the previous match
        deadline = time.time() + 10
        while seen.find(text.encode(), pos) < 0 and more(deadline):
            pass
        at = seen.find(text.encode(), pos)
        if at < 0:
            rc = 124
            break
        pos = at + len(text)
    elif verb == "send":
        os.write(fd, text.encode() + b"\r")
deadline = time.time() + 20
while more(deadline):
    pass
for _ in range(200):
    done, st = os.waitpid(pid, os.WNOHANG)
    if done:
        break
    time.sleep(0.1)
else:
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    rc = 124
open("pty.out", "wb").write(seen)
sys.exit(rc if rc is not None else (os.WEXITSTATUS(st) if os.WIFEXITED(st) else 128))
PYEOF
tty_run() {   # tty_run "expect X" "send Y" ... -- ARGV
    : >pty.script
    while [ "$1" != -- ]; do printf '%s\n' "$1" >>pty.script; shift; done
    shift
    python3 ptyrun.py pty.script -- "$@"
}

# ============================ passphrases ====================================
"$kmdc" test-mkcard --serial 00000000000000a1 --address alice --url $URL_DEAD --out a.card \
    >a.keys 2>err || bail "test-mkcard failed: $(cat err)"
ka() { "$kmdc" --card "$work/a.card" "$@"; }

tty_run "expect New passphrase" "send tr0ub4dor sesame" "expect again" "send tr0ub4dor sesame" \
    -- "$kmdc" --card "$work/a.card" card passphrase; rc=$?
setsid -w "$kmdc" --card "$work/a.card" card </dev/null >/dev/null 2>&1; rc2=$?
[ $rc -eq 0 ] && [ $rc2 -eq 7 ] && grep -q 'protected by the new passphrase' pty.out
ok $? "card passphrase: typed twice on the terminal sets it; the card then needs it"
! grep -q 'tr0ub4dor' pty.out
ok $? "card passphrase: the typed passphrase is not echoed"

tty_run "expect Passphrase for the card" "send tr0ub4dor sesame" \
    -- "$kmdc" --card "$work/a.card" card; rc=$?
[ $rc -eq 0 ] && grep -q 'protected: yes' pty.out && grep -q 'serial: 00000000000000a1' pty.out \
    && ! grep -q 'tr0ub4dor' pty.out
ok $? "prompt: a protected card asks for its passphrase on the terminal, without echo"

tty_run "expect Passphrase for the card" "send wrong one" "expect wrong passphrase" \
    "expect Passphrase for the card" "send tr0ub4dor sesame" -- "$kmdc" --card "$work/a.card" card; rc=$?
[ $rc -eq 0 ] && grep -q 'protected: yes' pty.out
ok $? "prompt: a wrong passphrase is asked again"

tty_run "expect Passphrase" "send x1" "expect Passphrase" "send x2" "expect Passphrase" "send x3" \
    -- "$kmdc" --card "$work/a.card" card; rc=$?
[ $rc -eq 7 ] && grep -q 'wrong passphrase (3 tries)' pty.out
ok $? "prompt: three wrong passphrases exit 7"

out=$(setsid -w "$kmdc" --card "$work/a.card" card </dev/null 2>&1); rc=$?
[ $rc -eq 7 ] && [[ $out == *"no terminal"* ]] && [[ $out == *"--passphrase-file"* ]]
ok $? "prompt: without a terminal the message says to use --passphrase-file (exit 7)"

printf 'tr0ub4dor sesame\n' >pass.txt
out=$(ka --passphrase-file pass.txt card 2>&1); rc=$?
[ $rc -eq 7 ] && [[ $out == *"passphrase file can be read or written by others; run: chmod 600 pass.txt"* ]]
ok $? "passphrase file: mode 0644 is refused like a card, with the chmod to run (exit 7)"
chmod 640 pass.txt
out=$(ka --passphrase-file pass.txt card 2>&1); rc=$?
ok $(( rc != 7 )) "passphrase file: a group-readable one (0640) is refused too"
chmod 600 pass.txt
out=$(ka --passphrase-file pass.txt card 2>&1); rc=$?
[ $rc -eq 0 ] && [[ $out == *"protected: yes"* ]]
ok $? "passphrase file: mode 0600 is used"
out=$(ka --passphrase-file <(printf 'tr0ub4dor sesame\n') card 2>&1); rc=$?
[ $rc -eq 0 ]
ok $? "passphrase file: a pipe (<(...)) is used"

tty_run "expect New passphrase" "send first" "expect again" "send second" \
    -- "$kmdc" --card "$work/a.card" --passphrase-file "$work/pass.txt" card passphrase; rc=$?
[ $rc -eq 7 ] && grep -q 'differ' pty.out && ka --passphrase-file pass.txt card >/dev/null 2>&1
ok $? "card passphrase: two different entries change nothing (exit 7)"

printf 'new sesame\n' >new.txt
chmod 600 new.txt
ka --passphrase-file pass.txt card passphrase --new-passphrase-file new.txt >out 2>err; rc=$?
[ $rc -eq 0 ] && ka --passphrase-file new.txt card >/dev/null 2>&1 \
    && ! ka --passphrase-file pass.txt card >/dev/null 2>&1
ok $? "card passphrase --new-passphrase-file: changes it without a terminal"

ka --passphrase-file new.txt card passphrase --remove >out 2>err; rc=$?
out=$(setsid -w "$kmdc" --card "$work/a.card" card </dev/null 2>&1); rc2=$?
[ $rc -eq 0 ] && [ $rc2 -eq 0 ] && [[ $out == *"protected: no"* ]] && grep -q 'no longer protected' out
ok $? "card passphrase --remove: the card is stored without a passphrase"

out=$(setsid -w "$kmdc" --card "$work/a.card" card passphrase </dev/null 2>&1); rc=$?
[ $rc -eq 2 ] && [[ $out == *"--new-passphrase-file"* ]] && [ "$(ka card | field protected)" = no ]
ok $? "card passphrase: without a terminal or file it says how (exit 2), nothing changed"

ka card --remove >/dev/null 2>&1; rc=$?
ok $(( rc != 2 )) "card --remove without 'passphrase' is a usage error"

# ============================ names ==========================================
"$kmdc" test-mkcard --serial 00000000000000b2 --address bob --url $URL_DEAD --out b.card \
    >b.keys 2>err || bail "test-mkcard failed"
DK_B=$(keyof down-key b.keys)
kb() { "$kmdc" --card "$work/b.card" "$@"; }
down() {   # down SEQ NAME FILE OUT
    "$kmdc" test-seal-down --serial 00000000000000b2 --seq "$1" --down-key "$DK_B" --from alice \
        --fromserial 00000000000000a1 --msgid 000000000000010$1 --name "$2" -o "$4" "$3"
}
printf 'export EVIL=1\n' >doc.txt
mkdir home
down 0 .bash_profile doc.txt d0.kmdc && down 1 -rf doc.txt d1.kmdc && down 2 ..hidden doc.txt d2.kmdc \
    || bail "test-seal-down failed"
kb open -d home d0.kmdc >out 2>err; rc=$?
[ $rc -eq 0 ] && [ ! -e home/.bash_profile ] && cmp -s home/_.bash_profile doc.txt \
    && [ "$(cat out)" = home/_.bash_profile ] && grep -q '^name: .bash_profile$' err
ok $? "names: a NAME .bash_profile is saved as _.bash_profile, never as a dotfile"
kb open -d home d1.kmdc >out 2>err; rc=$?
[ $rc -eq 0 ] && [ ! -e home/-rf ] && cmp -s home/_-rf doc.txt
ok $? "names: a NAME -rf is saved as _-rf"
kb open -d home d2.kmdc >out 2>err; rc=$?
[ $rc -eq 0 ] && [ "$(ls -A home | sort | tr '\n' ' ')" = "_-rf _..hidden _.bash_profile " ]
ok $? "names: no file in the folder starts with '.' or '-'"
zw=$(printf 'report\xe2\x80\x8b.pdf')
out=$(ka seal --to bob --name "$zw" -o z.kmdc doc.txt 2>&1); rc=$?
[ $rc -eq 2 ] && [[ $out == *"invisible"* ]] && [ ! -s z.kmdc ]
ok $? "names: seal refuses a --name with U+200B (zero width space), exit 2"
cp doc.txt "$(printf 'a\xef\xbb\xbfb.txt')"
out=$(ka seal --to bob -o z.kmdc "$(printf 'a\xef\xbb\xbfb.txt')" 2>&1); rc=$?
[ $rc -eq 1 ] && [[ $out == *"--name"* ]]
ok $? "names: a file whose name holds U+FEFF needs --name (exit 1)"
out=$(ka seal --to bob --name "$(printf 'x\xe2\x80\x8fy')" -o z.kmdc doc.txt 2>&1); rc=$?
ok $(( rc != 2 )) "names: seal refuses U+200F (right-to-left mark)"

# ============================ access codes ===================================
"$kmdc" test-mkcard --issued --serial 00000000000000c3 --address carol --url $URL_DEAD \
    --out c.card >/dev/null 2>&1 || bail "test-mkcard failed"
kc() { "$kmdc" --card "$work/c.card" "$@"; }
out=$(kc activate 12345 2>&1); rc=$?
[ $rc -eq 2 ] && [[ $out == *"mistyped"* ]] && [[ $out == *"no attempt was used"* ]] \
    && [ "$(kc card | field state)" = issued ]
ok $? "activate: a 5-character code is refused before anything is sent (exit 2)"
out=$(kc activate ABCDE-FGHJK-K 2>&1); rc=$?
[ $rc -eq 2 ] && [[ $out == *"check character"* ]] && [ "$(kc card | field state)" = issued ]
ok $? "activate: a wrong check character is refused before anything is sent"
out=$(kc activate ABCDE-FGHUK-J 2>&1); rc=$?
[ $rc -eq 2 ] && [[ $out == *"alphabet"* ]]
ok $? "activate: a character outside the alphabet (U) is refused"
out=$(kc activate ABCDE-FGHJK-J 2>&1); rc=$?
[ $rc -eq 6 ] && [[ $out != *"mistyped"* ]]
ok $? "activate: a well-formed code with its check character goes to the datacenter"

# ============================ progress =======================================
cat >mock.py <<'PYEOF'
import os, sys, time, json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
env_file, port_file = sys.argv[1], sys.argv[2]
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a):
        pass
    def reply(self, code, data, ctype="application/json"):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def do_POST(self):
        n = int(self.headers.get("Content-Length") or 0)
        left = n
        while left > 0:
            left -= len(self.rfile.read(min(left, 65536)))
        time.sleep(1.5)          # the datacenter publishes
        self.reply(201, json.dumps({"message": "00000000000001f0", "deliveries": 1}).encode())
    def do_GET(self):
        p = self.path.split("?")[0].split("/")
        if len(p) == 4:
            body = json.dumps({"down_next": 0, "deliveries": [
                {"id": "00000000000002a0", "seq": 3, "size": 1, "created": 0}]}).encode()
            return self.reply(200, body)
        return self.reply(200, open(env_file, "rb").read(), "application/vnd.kmdc.envelope")
    def do_DELETE(self):
        self.reply(204, b"")
srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
open(port_file + ".tmp", "w").write(str(srv.server_address[1]))
os.rename(port_file + ".tmp", port_file)
srv.serve_forever()
PYEOF
head -c 3000000 /dev/urandom >big.bin
down 3 big.bin big.bin d3.kmdc || bail "test-seal-down failed"
python3 mock.py "$work/d3.kmdc" "$work/port" 2>mock.err &
mockpid=$!
for _ in $(seq 50); do [ -s port ] && break; sleep 0.1; done
[ -s port ] || bail "the loopback stand-in did not start: $(cat mock.err)"
URL=http://127.0.0.1:$(cat port)/kmdc

ka --url "$URL" send --to bob big.bin >out 2>err; rc=$?
[ $rc -eq 0 ] && [ ! -s err ]
ok $? "progress: silent by default when stderr is not a terminal"
ka --url "$URL" --progress send --to bob big.bin >out 2>err; rc=$?
[ $rc -eq 0 ] && grep -qE '^big\.bin: 100% 2\.9 MiB of 2\.9 MiB, [0-9.]+ [KMG]?i?B/s, publishing$' err \
    && ! grep -q $'\r' err
r=$?
ok $r "progress: --progress writes lines with %, bytes, rate and 'publishing' after the last byte"
[ $r -eq 0 ] || diag "$(cat err)"
[ "$(grep -c publishing err)" = 1 ] && [ "$(grep -cvE '^big\.bin: ' err)" = 0 ]
ok $? "progress: a log gets 'publishing' once and nothing but progress lines"
ka --url "$URL" --progress --no-progress send --to bob big.bin >out 2>err; rc=$?
[ $rc -eq 0 ] && [ ! -s err ]
ok $? "progress: --no-progress (the last one given) turns it off"
mkdir in
kb --url "$URL" --progress fetch -d in >out 2>err; rc=$?
[ $rc -eq 0 ] && cmp -s in/big.bin big.bin \
    && grep -qE '^delivery 00000000000002a0: 100% 2\.9 MiB of 2\.9 MiB' err
r=$?
ok $r "progress: a download shows its progress too"
[ $r -eq 0 ] || diag "$(cat err)"
tty_run "expect publishing" -- "$kmdc" --card "$work/a.card" --url "$URL" send --to bob big.bin
rc=$?
[ $rc -eq 0 ] && grep -q $'\r''big\.bin: 100% 2\.9 MiB of 2\.9 MiB, .*publishing' pty.out \
    && grep -q '^00000000000001f0 1 big\.bin' <(tr -d '\r' <pty.out)
r=$?
ok $r "progress: on a terminal it is drawn in place (\\r) and shows 'publishing' while the datacenter works"
[ $r -eq 0 ] || diag "$(od -c pty.out | tail -20)"
tty_run "expect 1f0" -- "$kmdc" --card "$work/a.card" --url "$URL" -q send --to bob big.bin
rc=$?
[ $rc -eq 0 ] && ! grep -q '%' pty.out
ok $? "progress: -q keeps a terminal quiet"

tap_done
