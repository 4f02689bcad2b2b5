#!/usr/bin/env bash
# t/docs.sh - the documents agree with the code, both ways (mod_auth_openidc
# fails its suite on an undocumented directive; so do we).  Prints TAP.
#
#   t/docs.sh [BUILDDIR]
#
# Checked against the code, everywhere they are documented:
#   directives       the module's directive table (mod_kmdc_directives.h, as
#                    tools/kmdc-directives prints it) <-> docs/DIRECTIVES.md,
#                    docs/ADMIN.md, each with the table's default; every Kmdc*
#                    word in the documents, man pages, README.md and conf/ is a
#                    directive
#   kmdcadm commands kmdcadm.c's table <-> a `.SS` of kmdcadm(8); every
#                    `kmdcadm WORD` in README.md and docs/*.md is a command
#   kmdc commands    kmdc.c's table <-> kmdc(1)'s COMMANDS; every `kmdc WORD`
#   metric names     the names mod_kmdc_metrics_page.c prints <-> docs/ADMIN.md's
#                    metrics table; every kmdc_*_total etc. in the documents
#   API error codes  every code the module and the intake answer with <->
#                    docs/API.md's error table; every {"error":"X"} in the docs
#   citations        nothing cites DESIGN (the project does not ship it)
# With BUILDDIR, also `kmdcadm --help` and `kmdc --help` list every command.
set -u
top=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-}
. "$top/t/lib/tap.sh"
userdocs="$top/README.md $top/docs/ADMIN.md $top/docs/API.md $top/docs/DIRECTIVES.md
          $top/docs/PROTOCOL.md $top/docs/SCALING.md $top/docs/SCHEMA.md
          $top/docs/kmdc.1 $top/docs/kmdcadm.8"
# shellcheck disable=SC2086
alldocs="$userdocs $(ls "$top"/conf/*.conf)"

# --- directives ------------------------------------------------------------------
# The table as tools/kmdc-directives prints it (NAME, ARGUMENTS, DEFAULT or -):
# the build's, else compiled here from the header alone.
dirtool="$build/tools/kmdc-directives"
if [ -z "$build" ] || [ ! -x "$dirtool" ]; then
    dirtmp=$(mktemp -d); trap 'rm -rf "$dirtmp"' EXIT
    dirtool="$dirtmp/kmdc-directives"
    "${CC:-cc}" -I"$top/mod_kmdc" -o "$dirtool" "$top/tools/kmdc_directives.c" || dirtool=false
fi
dirtable=$("$dirtool")
directives=$(printf '%s\n' "$dirtable" | cut -f1)
[ -n "$directives" ]; ok $? "the module's directive table lists directives"
for d in $directives; do
    grep -q "\`$d\`\|^$d \|^ *$d \|\b$d\b" "$top/docs/DIRECTIVES.md"; ok $? "$d is documented in docs/DIRECTIVES.md"
    grep -q "\b$d\b" "$top/docs/ADMIN.md"; ok $? "$d is documented in docs/ADMIN.md"
    def=$(printf '%s\n' "$dirtable" | awk -F '\t' -v d="$d" '$1 == d { print $3 }')
    [ "$def" != "-" ] || continue
    for doc in DIRECTIVES.md ADMIN.md; do
        # the default column of the directive's row, without backticks
        got=$(sed -n "s/^| \`$d\` | [^|]* | \([^|]*\) |.*/\1/p" "$top/docs/$doc" | tr -d '`')
        [ "$got" = "$def" ]; ok $? "$d's default in docs/$doc is the table's ($def)"
        [ "$got" = "$def" ] || diag "docs/$doc says: '$got'"
    done
done
# shellcheck disable=SC2086
unknown=$(grep -ohw 'Kmdc[A-Z][A-Za-z]*' $alldocs | sort -u | while read -r w; do
    printf '%s\n' "$directives" | grep -qx "$w" || echo "$w"; done)
[ -z "$unknown" ]; ok $? "every Kmdc* word in the documents and conf/ is a directive"
[ -z "$unknown" ] || diag "not directives: $unknown"

# --- kmdcadm commands -------------------------------------------------------------
adm_cmds=$(sed -n 's/^    { "\([a-z-]*\)", cmd_[a-z_]*,.*/\1/p' "$top/admin/kmdcadm.c")
[ -n "$adm_cmds" ]; ok $? "kmdcadm has commands"
adm_ss=$(sed -n 's/^\.SS \([a-z-]*\)$/\1/p' "$top/docs/kmdcadm.8")
for c in $adm_cmds; do
    printf '%s\n' "$adm_ss" | grep -qx "$c"; ok $? "kmdcadm $c has its .SS section in kmdcadm(8)"
done
extra=$(for s in $adm_ss; do printf '%s\n' "$adm_cmds" | grep -qx "$s" || echo "$s"; done)
[ -z "$extra" ]; ok $? "every .SS of kmdcadm(8) is a command"
[ -z "$extra" ] || diag "not commands: $extra"
# shellcheck disable=SC2086
# (as code: after a backtick, at the start of a line of a code block, or in
# the man pages' .B/.BR lines)
used=$(grep -oh '\(`\|^\(sudo \|\$ \|[A-Z]*=[^ ]* \)*\|^\.BR\? \)kmdcadm \(--[a-z-]* \("[^"]*"\|[^ "]*\) \)*[a-z][a-z-]*' \
           $userdocs "$top/scripts/demo" 2>/dev/null | awk '{print $NF}' | sort -u)
unknown=$(for w in $used; do printf '%s\nhelp\n' "$adm_cmds" | grep -qx "$w" || echo "$w"; done)
[ -z "$unknown" ]; ok $? "every 'kmdcadm WORD' in the documents names a command"
[ -z "$unknown" ] || diag "unknown: $unknown"

# --- kmdc commands ------------------------------------------------------------------
kmdc_cmds=$(awk '/^#ifdef KMDC_TEST_HOOKS/ {skip = 1} /^#endif/ {skip = 0}
                 !skip && /^    \{ "[a-z-]*", (kmdc_)?cmd_[a-z_]*,/ {
                     match($0, /"[a-z-]*"/); print substr($0, RSTART + 1, RLENGTH - 2) }' \
            "$top/kmdc/kmdc.c")
[ -n "$kmdc_cmds" ]; ok $? "kmdc has commands"
kmdc_tp=$(awk '/^\.SH COMMANDS/ {on = 1; next} /^\.SH/ {on = 0}
               on && prev == ".TP" && /^\.BI? / { w = $2; gsub(/"/, "", w); print w }
               { prev = $0 }' "$top/docs/kmdc.1")
for c in $kmdc_cmds; do
    printf '%s\n' "$kmdc_tp" | grep -qx "$c"; ok $? "kmdc $c is an entry of kmdc(1)'s COMMANDS"
done
extra=$(for s in $kmdc_tp; do printf '%s\n' "$kmdc_cmds" | grep -qx "$s" || echo "$s"; done)
[ -z "$extra" ]; ok $? "every entry of kmdc(1)'s COMMANDS is a command"
[ -z "$extra" ] || diag "not commands: $extra"
# shellcheck disable=SC2086
used=$(grep -oh '\(`\|^\(sudo \|\$ \|[A-Z]*=[^ ]* \)*\|^\.BR\? \)kmdc \(--[a-z-]* [^ ]* \|-q \)*[a-z][a-z-]*' \
           $userdocs | awk '{print $NF}' | sort -u)
unknown=$(for w in $used; do printf '%s\nhelp\n' "$kmdc_cmds" | grep -qx "$w" || echo "$w"; done)
[ -z "$unknown" ]; ok $? "every 'kmdc WORD' in the documents names a command"
[ -z "$unknown" ] || diag "unknown: $unknown"

if [ -n "$build" ] && [ -x "$build/admin/kmdcadm" ] && [ -x "$build/kmdc/kmdc" ]; then
    h=$("$build/admin/kmdcadm" --help); miss=""
    for c in $adm_cmds; do printf '%s\n' "$h" | grep -q "^  $c\b" || miss="$miss $c"; done
    h=$("$build/kmdc/kmdc" --help 2>&1); for c in $kmdc_cmds; do
        printf '%s\n' "$h" | grep -q "^  $c\b" || miss="$miss kmdc:$c"; done
    [ -z "$miss" ]; ok $? "kmdcadm --help and kmdc --help list every command"
    [ -z "$miss" ] || diag "missing:$miss"
fi

# --- metrics ----------------------------------------------------------------------------
metrics=$(grep -o '"kmdc_[a-z_]*"' "$top/mod_kmdc/mod_kmdc_metrics_page.c" | tr -d '"' | sort -u)
[ -n "$metrics" ]; ok $? "the module prints metrics"
table=$(sed -n '/^## 11\. Metrics/,/^## 12\./p' "$top/docs/ADMIN.md" | sed -n 's/^| `\(kmdc_[a-z_]*\)` |.*/\1/p' | sort -u)
for m in $metrics; do
    printf '%s\n' "$table" | grep -qx "$m"; ok $? "metric $m is in docs/ADMIN.md's metrics table"
done
# shellcheck disable=SC2086
used=$(grep -ohw 'kmdc_[a-z_]*_\(total\|seconds\|waiting\|info\|in_use\|inflight\|in_flight\|bucket\|count\|sum\)' $alldocs | sort -u)
unknown=$(for w in $used; do
    b=${w%_bucket}; b=${b%_count}; b=${b%_sum}
    printf '%s\n' "$metrics" | grep -qx "$w" || printf '%s\n' "$metrics" | grep -qx "$b" || echo "$w"; done)
[ -z "$unknown" ]; ok $? "every metric name in the documents is printed by the module"
[ -z "$unknown" ] || diag "unknown: $unknown"

# --- API error codes -------------------------------------------------------------------------
codes=$( { grep -h -A1 'kmdc_http_error(' "$top"/mod_kmdc/*.c | grep -o '[A-Z_0-9]*, *"[a-z_]*"' | grep -o '"[a-z_]*"'
           grep -ho ' [0-9][0-9][0-9], "[a-z_]*"' "$top"/lib/kmdc_intake*.c | grep -o '"[a-z_]*"'
           sed -n '/^const char \*kmdc_http_error_code/,/^}/p' "$top/mod_kmdc/mod_kmdc_http.c" | grep -o 'return "[a-z_]*"' | grep -o '"[a-z_]*"'
           grep -ho '"error", "[a-z_]*"' "$top"/mod_kmdc/*.c | sed 's/"error", //'
         } | tr -d '"' | sort -u)
[ -n "$codes" ]; ok $? "the module answers with error codes"
api=$(sed -n '/^## Errors/,$p' "$top/docs/API.md" | sed -n 's/^| \([0-9][0-9][0-9]\|other\) | `\([a-z_]*\)` |.*/\2/p' | sort -u)
for c in $codes; do
    printf '%s\n' "$api" | grep -qx "$c"; ok $? "error code $c is in docs/API.md's error table"
done
extra=$(for c in $api; do printf '%s\n' "$codes" | grep -qx "$c" || echo "$c"; done)
[ -z "$extra" ]; ok $? "every code of docs/API.md's error table is one the module answers with"
[ -z "$extra" ] || diag "not answered: $extra"
# shellcheck disable=SC2086
used=$(grep -oh '"error": *"[a-z_]*"' $alldocs | sed 's/.*"\([a-z_]*\)"$/\1/' | sort -u)
unknown=$(for w in $used; do printf '%s\n' "$codes" | grep -qx "$w" || echo "$w"; done)
[ -z "$unknown" ]; ok $? "every {\"error\":...} in the documents is a code the module answers with"
[ -z "$unknown" ] || diag "unknown: $unknown"

# --- citations --------------------------------------------------------------------------------
cites=$(grep -rln 'DESIGN' "$top"/docs "$top"/sql "$top"/mod_kmdc "$top"/kmdc "$top"/admin "$top"/lib \
            "$top"/tests "$top"/t "$top"/README.md "$top"/conf "$top"/scripts 2>/dev/null \
        | grep -v '/t/logs/\|/t/docs.sh$')
[ -z "$cites" ]; ok $? "nothing cites DESIGN (a document the project does not ship)"
[ -z "$cites" ] || diag "cites DESIGN: $cites"
grep -q 'docs/PROTOCOL.md' "$top/Makefile.am" && grep -q '^dist_doc_DATA' "$top/Makefile.am"
ok $? "PROTOCOL.md, which kmdc(1) and kmdcadm(8) point to, is installed (dist_doc_DATA)"

tap_done
