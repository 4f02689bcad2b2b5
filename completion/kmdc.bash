# bash completion for kmdc(1) and kmdcadm(8)                -*- shell-script -*-
#
# Installed as .../bash-completion/completions/kmdc, with kmdcadm a link to it.
#
# Nothing here names a command or an option: they are read from the programs'
# own help, "PROG --help" for the commands and the options before a command,
# "PROG COMMAND --help" for the options after one, once per shell.  So the
# completion offers what the installed programs document, and t/completion.sh
# checks that this is exactly what they accept.  What an option's value is
# comes from its placeholder in the help: DIR completes folders; FILE, F and
# OUT complete file names; anything else (ADDR, N, SERIAL, ...) nothing.  A
# COMMAND operand (kmdcadm help COMMAND) completes the commands.

# _kmdc_learn PROG [CMD]: parse PROG's help once into the caches below.
#   _kmdc_cmds[PROG]        the commands, space-separated
#   _kmdc_opts[PROG CMD]    the options, space-separated
#   _kmdc_vals[PROG CMD]    " --opt=PLACEHOLDER ..." for options taking a value
#   _kmdc_oper[PROG CMD]    the first operand's placeholder (FILE|-, SERIAL, ...)
declare -gA _kmdc_cmds _kmdc_opts _kmdc_vals _kmdc_oper 2>/dev/null

_kmdc_learn() {
    local prog=$1 cmd=${2-} key="$1 ${2-}" line in_cmds=0 tok prevopt='' open=0 seen_cmd=0
    local opts=' ' vals=' ' oper='' cmds='' o
    local -a toks
    [[ -n ${_kmdc_opts[$key]+set} ]] && return 0
    while IFS= read -r line; do
        if [[ $line == Commands:* ]]; then in_cmds=1; continue; fi
        if [[ -z $line ]]; then in_cmds=0; continue; fi
        if ((in_cmds)) && [[ $line =~ ^[[:space:]]+([a-z][a-z0-9-]*) ]]; then
            cmds+="${BASH_REMATCH[1]} "
            continue
        fi
        if [[ $line == Usage:* ]]; then
            # the synopsis: options, their placeholders, the operands
            read -ra toks <<<"${line#*]}"          # after "[GLOBAL OPTIONS]"
            for tok in "${toks[@]}"; do
                if [[ -n $cmd && $seen_cmd == 0 && $tok == "$cmd" ]]; then seen_cmd=1; continue; fi
                [[ $tok == '|' ]] && continue
                if [[ $tok =~ ^\[?(--?[A-Za-z0-9][A-Za-z0-9-]*)(\]?)$ ]]; then
                    o=${BASH_REMATCH[1]}
                    [[ $opts == *" $o "* ]] || opts+="$o "
                    prevopt=$o
                    [[ -n ${BASH_REMATCH[2]} ]] && prevopt=''
                    continue
                fi
                tok=${tok#[}
                if [[ -n $prevopt && $tok =~ ^[A-Z] ]]; then
                    [[ $vals == *" $prevopt="* ]] || vals+="$prevopt=${tok%]} "
                elif [[ -z $oper && $tok =~ ^[A-Z] ]]; then
                    oper=${tok%]}
                fi
                prevopt=''
            done
            continue
        fi
        # an option line: "  -d, --dir DIR   text" or "  --to, --name as for send"
        if [[ $line =~ ^[[:space:]]+- ]]; then
            read -ra toks <<<"$line"
            prevopt=''
            for tok in "${toks[@]}"; do
                if [[ $tok =~ ^(--?[A-Za-z0-9][A-Za-z0-9-]*),?$ ]]; then
                    o=${BASH_REMATCH[1]}
                    [[ $opts == *" $o "* ]] || opts+="$o "
                    prevopt=$o
                    [[ $tok == *, ]] && continue
                    continue
                fi
                if [[ -n $prevopt && $tok =~ ^[A-Z] ]]; then
                    # the placeholder names every spelling on the line
                    for o in $(sed -E 's/[[:space:]]+[A-Z].*//; s/,/ /g' <<<"$line"); do
                        [[ $vals == *" $o="* ]] || vals+="$o=$tok "
                    done
                fi
                break
            done
        fi
    done < <(LC_ALL=C "$prog" ${cmd:+"$cmd"} --help 2>/dev/null)
    [[ -z $cmd ]] && _kmdc_cmds[$prog]=$cmds
    _kmdc_opts[$key]=$opts
    _kmdc_vals[$key]=$vals
    _kmdc_oper[$key]=$oper
}

# _kmdc_value KIND CUR: complete CUR as a value of placeholder KIND.
_kmdc_value() {
    local kind=$1 cur=$2 prog=$3
    case $kind in
    *DIR*)
        compopt -o filenames 2>/dev/null
        mapfile -t COMPREPLY < <(compgen -d -- "$cur") ;;
    FILE|FILE\|-|FILE...|F|OUT)
        compopt -o filenames 2>/dev/null
        mapfile -t COMPREPLY < <(compgen -f -- "$cur") ;;
    COMMAND)
        _kmdc_learn "$prog"
        mapfile -t COMPREPLY < <(compgen -W "${_kmdc_cmds[$prog]}" -- "$cur") ;;
    *)
        COMPREPLY=() ;;
    esac
}

_kmdc_complete() {
    local line=${COMP_LINE:0:COMP_POINT} prog cmd='' key cur w i want='' kind ddash=0
    local -a words
    read -ra words <<<"$line"
    [[ $line =~ [[:space:]]$ ]] && words+=('')
    ((${#words[@]} >= 2)) || return 0
    prog=${words[0]}
    cur=${words[-1]}
    COMPREPLY=()
    _kmdc_learn "$prog"
    key="$prog "
    # walk the words before the cursor: skip option values, find the command
    for ((i = 1; i < ${#words[@]} - 1; i++)); do
        w=${words[i]}
        if [[ -n $want ]]; then want=''; continue; fi
        if [[ $w == -- ]]; then ddash=1; break; fi
        if [[ $w == -* ]]; then
            [[ $w != *=* && ${_kmdc_vals[$key]} == *" $w="* ]] && want=$w
            continue
        fi
        if [[ -z $cmd ]]; then
            cmd=$w
            _kmdc_learn "$prog" "$cmd"
            key="$prog $cmd"
        fi
    done
    if [[ -n $want ]]; then                       # the value of option $want
        kind=${_kmdc_vals[$key]#* $want=}
        _kmdc_value "${kind%% *}" "$cur" "$prog"
    elif ((ddash)); then                           # after --: operands only
        [[ -n $cmd ]] && _kmdc_value "${_kmdc_oper[$key]}" "$cur" "$prog"
    elif [[ $cur == --*=* ]]; then                 # --opt=VALUE
        want=${cur%%=*}
        if [[ ${_kmdc_vals[$key]} == *" $want="* ]]; then
            kind=${_kmdc_vals[$key]#* $want=}
            _kmdc_value "${kind%% *}" "${cur#*=}" "$prog"
        fi
    elif [[ $cur == -* ]]; then
        mapfile -t COMPREPLY < <(compgen -W "${_kmdc_opts[$key]}" -- "$cur")
    elif [[ -z $cmd ]]; then
        mapfile -t COMPREPLY < <(compgen -W "${_kmdc_cmds[$prog]}" -- "$cur")
    else
        _kmdc_value "${_kmdc_oper[$key]}" "$cur" "$prog"
    fi
    return 0
}

complete -F _kmdc_complete kmdc kmdcadm
