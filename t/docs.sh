#!/usr/bin/env bash
# t/docs.sh - every directive the module defines is documented, in
# docs/DIRECTIVES.md and docs/ADMIN.md (mod_auth_openidc fails its suite on an
# undocumented directive; so do we).  Prints TAP.  Takes the build dir (unused).
set -u
top=$(cd "$(dirname "$0")/.." && pwd)
n=0; bad=0
ok() { n=$((n + 1)); if [ "$1" = 0 ]; then echo "ok $n - $2"; else echo "not ok $n - $2"; bad=$((bad + 1)); fi; }
directives=$(sed -n 's/^#define KMDC_DIR_[A-Z_]* *"\(Kmdc[A-Za-z]*\)".*/\1/p' "$top/mod_kmdc/mod_kmdc_config.h")
[ -n "$directives" ]; ok $? "the module defines directives"
for d in $directives; do
    grep -q "\b$d\b" "$top/docs/DIRECTIVES.md"; ok $? "$d is documented in docs/DIRECTIVES.md"
    grep -q "\b$d\b" "$top/docs/ADMIN.md"; ok $? "$d is documented in docs/ADMIN.md"
done
for c in migrate keygen issue list show suspend resume revoke resync rekey purge audit; do
    grep -q "^\.SS.*$c\|^\.B $c\|^\.TP.*$c\|$c" "$top/docs/kmdcadm.8"; ok $? "kmdcadm $c is in kmdcadm(8)"
done
echo "1..$n"
[ "$bad" -eq 0 ]
