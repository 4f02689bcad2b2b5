#!/usr/bin/env bash
# t/completion.sh BUILD_DIR - the bash completion (completion/kmdc.bash) against
# the programs it completes, BUILD_DIR/kmdc/kmdc and BUILD_DIR/admin/kmdcadm.
#
# The completion reads commands and options from the programs' help; this
# suite checks that what it offers is exactly what the programs accept:
#   - the commands completed are the commands of the program's command table
#     in kmdc/ and admin/ (those of test builds only excepted), each accepted;
#   - for the options before a command and after each command, the options
#     completed are exactly those the program accepts, found by asking the
#     program about every long option any table in kmdc/ or admin/ names and every
#     short option any option string there names ("PROG [CMD] OPT X --help":
#     refused with "unknown option", or not);
#   - an option completes a value exactly when the program takes one
#     ("OPT=X --help" / "-oX --help" accepted), so the word after it is not
#     taken for a command;
#   - values and operands: folders for DIR, files for FILE, nothing for
#     addresses and serials, commands for "kmdcadm help".
# Nothing is run but "--help" forms: no card, no database.  TAP output.
set -u

top=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "${1:?usage: t/completion.sh BUILD_DIR}" && pwd)
export PATH="$build/kmdc:$build/admin:$PATH" LC_ALL=C HOME=${HOME:-/nonexistent}

. "$top/t/lib/tap.sh"

for p in kmdc/kmdc admin/kmdcadm; do
    [ -x "$build/$p" ] || { skip_all "$build/$p not built" 1; }
done

# shellcheck source=../completion/kmdc.bash
. "$top/completion/kmdc.bash"

# complete LINE: the completions of LINE with the cursor at its end, sorted.
complete_line() {
    COMP_LINE=$1
    COMP_POINT=${#1}
    COMPREPLY=()
    _kmdc_complete
    ((${#COMPREPLY[@]})) && printf '%s\n' "${COMPREPLY[@]}" | sort -u
}
words() { tr ' ' '\n' | sed '/^$/d' | sort -u; }

# --- what the sources name -------------------------------------------------------
# universe FILE...: every long option of every option table in FILEs and
# every letter of every option string handed to getopt_long or
# kmdc_cli_parse there (the commands of test builds, kmdc_testcmd.c, left out)
universe() {
    grep -ohE '\{ "[a-z][a-z0-9-]*", (no|required|optional)_argument' "$@" |
        sed -E 's/^\{ "([^"]*)".*/--\1/' | sort -u
    { grep -h -A2 -E 'getopt_long\(|kmdc_cli_parse\(|snprintf\(shorts' "$@" |
        grep -oE '"[+:]*[a-zA-Z:%s]*:[a-zA-Z:%s]*"' | sed 's/%s//g'; echo '"h"'; } |
        grep -oE '[a-zA-Z]' | sort -u | sed 's/^/-/'
}
kmdc_universe=$(universe "$top"/kmdc/kmdc.c "$top"/kmdc/kmdc_seal.c \
    "$top"/kmdc/kmdc_fetch.c "$top"/kmdc/kmdc_account.c "$top"/kmdc/kmdc_cardcmd.c \
    "$top"/kmdc/kmdc_send.c "$top"/kmdc/kmdc_open.c)
kmdcadm_universe=$(universe "$top"/admin/kmdcadm*.c)
# the command tables: { "name", function, ... } inside "commands[] = {",
# without those under #ifdef KMDC_TEST_HOOKS (test builds only)
table_commands() {
    awk '/commands\[\] = \{/ { on = 1; next }
         on && /^};/ { on = 0 }
         on && /^#ifdef KMDC_TEST_HOOKS/ { skip = 1 }
         on && /^#endif/ { skip = 0 }
         on && !skip && match($0, /^    \{ "[a-z][a-z0-9-]*", /) {
             s = substr($0, RSTART + 7); sub(/".*/, "", s); print s }' "$1" | sort -u
}
kmdc_table=$(table_commands "$top/kmdc/kmdc.c")
# kmdcadm also takes "help [COMMAND]" (its main())
kmdcadm_table=$( { table_commands "$top/admin/kmdcadm.c"; echo help; } | sort -u)

# --- commands -------------------------------------------------------------------
for p in kmdc kmdcadm; do
    if [ "$p" = kmdc ]; then table=$kmdc_table; else table=$kmdcadm_table; fi
    got=$(complete_line "$p ")
    if [ -n "$table" ] && [ "$got" = "$table" ]; then
        pass "$p: the commands completed are its command table: $(echo $got)"
    else
        nok "$p: the commands completed are its command table"
        diff <(echo "$table") <(echo "$got") | diag
    fi
    bad=''
    for c in $got; do
        "$p" "$c" --help >/dev/null 2>&1 || bad="$bad $c"
    done
    if [ -z "$bad" ]; then pass "$p: every command completed is accepted"; else nok "$p: not accepted:$bad"; fi
    got=$(complete_line "$p s")
    want=$(echo "$table" | grep '^s' || :)
    if [ "$got" = "$want" ]; then pass "$p: a prefix completes the commands it begins"; else
        nok "$p: a prefix completes the commands it begins"; diff <(echo "$want") <(echo "$got") | diag; fi
done

# --- options, per context --------------------------------------------------------
# Each probe runs "PROG [CMD] OPT X --help": OPT is refused with "unknown
# option", or accepted (the help, or a complaint about X, follows).  Whether
# OPT takes a value: "OPT=X --help" (long) or "-oX --help" (short) is then
# accepted only when it does.  -h and --help print the help at once, so they
# are taken as valueless.  Probes run KMDC_JOBS (2) at a time.
probe() {   # PROG CTX OPT... -> "PROG|CTX|OPT|accepted|value" per OPT
    local p=$1 c=$2 o out acc val arg
    shift 2
    for o in "$@"; do
        acc=0 val=0
        out=$("$p" ${c:+"$c"} "$o" X --help 2>&1 >/dev/null)
        case $out in *"unknown option"*|*"unrecognized option"*|*"invalid option"*) ;; *) acc=1 ;; esac
        if [ "$acc" = 1 ] && [ "$o" != -h ] && [ "$o" != --help ]; then
            case $o in --*) arg="$o=X" ;; *) arg="${o}X" ;; esac
            out=$("$p" ${c:+"$c"} "$arg" --help 2>&1 >/dev/null)
            case $out in *"unknown option"*|*"unrecognized option"*|*"invalid option"*|*"allow"*) ;; *) val=1 ;; esac
        fi
        echo "$p|$c|$o|$acc|$val"
    done
}
export -f probe
# one line per context, "PROG|CTX|OPT OPT ...", KMDC_JOBS (2) contexts at a time
run_probes() { xargs -P "${KMDC_JOBS:-2}" -L1 -d '\n' bash -c 'IFS="|" read -r p c o <<<"$0"; probe "$p" "$c" $o'; }
# The options every command takes are the ones taken before a command (one
# table in each program, added to every command's): all of a program's
# options are probed before a command and after its first command, only the
# others after the rest.
probes=$(mktemp)
globals_of() { awk -F'|' -v p="$1" '$1 == p && $2 == "" && $4 == 1 { print $3 }' "$probes" | sort -u; }
for p in kmdc kmdcadm; do
    if [ "$p" = kmdc ]; then u=$kmdc_universe; else u=$kmdcadm_universe; fi
    echo "$p||$(echo $u)"
done | run_probes >"$probes"
for p in kmdc kmdcadm; do
    if [ "$p" = kmdc ]; then u=$kmdc_universe t=$kmdc_table; else u=$kmdcadm_universe t=$kmdcadm_table; fi
    g=$(globals_of "$p")
    first=$(echo "$t" | grep -vx help | head -n1)
    for c in $t; do
        [ "$c" = help ] && continue          # "help" takes a COMMAND, no options
        if [ "$c" = "$first" ]; then
            echo "$p|$c|$(echo $u)"
        else
            echo "$p|$c|$(comm -23 <(echo "$u" | sort -u) <(echo "$g") | tr '\n' ' ')"
        fi
    done
done | run_probes >>"$probes"
# getopt_long takes an unambiguous abbreviation: an option accepted only as
# the prefix of a longer one the same context accepts is that one's
# abbreviation (purge's --upload-age answers to --up), not an option.
awk -F'|' '{ acc[$1 "|" $2 "|" $3] = $4; line[NR] = $0; key[NR] = $1 "|" $2; opt[NR] = $3 }
     END { for (i = 1; i <= NR; i++) {
             if (acc[key[i] "|" opt[i]] == 1 && opt[i] ~ /^--/)
               for (j = 1; j <= NR; j++)
                 if (key[j] == key[i] && opt[j] != opt[i] && acc[key[j] "|" opt[j]] == 1 &&
                     index(opt[j], opt[i]) == 1) { sub(/\|1\|[01]$/, "|0|0", line[i]); break }
             print line[i] } }' "$probes" >"$probes.x" && mv "$probes.x" "$probes"

check_context() {   # PROG [CMD]
    local p=$1 c=${2-} want vwant got vgot g='' o
    _kmdc_learn "$p" "$c"
    want=$(awk -F'|' -v p="$p" -v c="$c" '$1 == p && $2 == c && $4 == 1 { print $3 }' "$probes" | sort -u)
    vwant=$(awk -F'|' -v p="$p" -v c="$c" '$1 == p && $2 == c && $5 == 1 { print $3 }' "$probes" | sort -u)
    got=$(complete_line "$p${c:+ $c} -")
    if [ -n "$c" ] && ! grep -qF -- "$p|$c|--help|" "$probes"; then
        # the global options were not probed here: checked before the command
        # and after the first one
        g=$(globals_of "$p")
        got=$(comm -23 <(echo "$got") <(echo "$g"))
    fi
    if [ -n "$want$g" ] && [ "$got" = "$want" ]; then
        pass "$p${c:+ $c}: the options completed are those it accepts ($(echo $got | wc -w)${g:+ besides the global ones})"
    else
        nok "$p${c:+ $c}: the options completed are those it accepts"
        diff <(echo "$want") <(echo "$got") | sed 's/^</accepted, not completed:/; s/^>/completed, not accepted:/' | diag
    fi
    vgot=$(for o in $got; do
        [[ ${_kmdc_vals["$p $c"]-} == *" $o="* ]] && echo "$o"; done | sort -u)
    if [ "$vgot" = "$vwant" ]; then
        pass "$p${c:+ $c}: the options completed with a value are those that take one ($(echo $vgot | wc -w))"
    else
        nok "$p${c:+ $c}: the options completed with a value are those that take one"
        diff <(echo "$vwant") <(echo "$vgot") | sed 's/^</takes a value, completed without:/; s/^>/completed with a value, takes none:/' | diag
    fi
}
check_context kmdc
for c in $kmdc_table; do check_context kmdc "$c"; done
check_context kmdcadm
for c in $kmdcadm_table; do
    [ "$c" = help ] && continue
    check_context kmdcadm "$c"
done
rm -f "$probes"

# --- values and operands --------------------------------------------------------
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir "$tmp/inbox" "$tmp/outbox"
: >"$tmp/alice.card"
: >"$tmp/report.pdf"
cd "$tmp" || exit 1
expect() {   # DESC LINE WANT...
    local desc=$1 line=$2 got want
    shift 2
    want=$(printf '%s\n' "$@" | sed '/^$/d' | sort -u)
    got=$(complete_line "$line")
    if [ "$got" = "$want" ]; then pass "$desc"; else
        nok "$desc"; { echo "line: $line"; diff <(echo "$want") <(echo "$got"); } | diag; fi
}
expect "kmdc --card FILE completes files" "kmdc --card " alice.card inbox outbox report.pdf
expect "kmdc --card=FILE completes files" "kmdc --card=al" alice.card
expect "kmdc: a global option's value is not the command" "kmdc --card alice.card se" seal send
expect "kmdc fetch -d DIR completes folders only" "kmdc fetch -d " inbox outbox
expect "kmdc watch --dir DIR completes folders only" "kmdc --card alice.card watch --dir i" inbox
expect "kmdc send --to ADDR completes nothing" "kmdc send --to "
expect "kmdc send FILE... completes files" "kmdc send --to bob r" report.pdf
expect "kmdc seal -o OUT completes files" "kmdc seal -o a" alice.card
expect "kmdc open FILE completes files" "kmdc open -d inbox r" report.pdf
expect "kmdc activate CODE completes nothing" "kmdc activate "
expect "kmdc sign METHOD completes nothing" "kmdc sign "
expect "kmdc: after --, no options" "kmdc send --to bob -- -" 
expect "kmdcadm show SERIAL completes nothing" "kmdcadm show "
expect "kmdcadm --master-key ID:FILE completes nothing" "kmdcadm --master-key "
expect "kmdcadm migrate --sqldir DIR completes folders" "kmdcadm migrate --sqldir " inbox outbox
expect "kmdcadm keygen --out FILE completes files" "kmdcadm keygen --out r" report.pdf
expect "kmdcadm --db CONNINFO completes nothing, then the commands" "kmdcadm --db x mi" migrate
# shellcheck disable=SC2046
expect "kmdcadm help COMMAND completes the commands" "kmdcadm help " $kmdcadm_table

tap_done
