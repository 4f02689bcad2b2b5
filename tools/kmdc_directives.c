/*
 * kmdc_directives.c - prints mod_kmdc's directive table
 * (mod_kmdc/mod_kmdc_directives.h), one directive a line:
 *
 *   NAME <tab> ARGUMENTS (1 or 2) <tab> DEFAULT as written, or "-"
 *
 * t/docs.sh reads it: every directive of the table must be documented, with
 * the table's default.  Built from the header alone (no httpd, no APR), so
 * t/docs.sh can also compile it when no build directory is given.
 */
#include <stdio.h>

#include "mod_kmdc_directives.h"

#define KMDC_NARGS_TAKE1 1
#define KMDC_NARGS_TAKE2 2
#define PRINT_ROW(ID, ARGS, SETTER, DEF, HELP, F1, F2) \
    if (print_row(KMDC_DIR_##ID, KMDC_NARGS_##ARGS, KMDC_DEFTEXT_##DEF) < 0) \
        goto out;

static int print_row(const char *name, int nargs, const char *def)
{
    return printf("%s\t%d\t%s\n", name, nargs, def != NULL ? def : "-");
}

int main(void)
{
    int rc = 1;

    KMDC_DIRECTIVES(PRINT_ROW)
    rc = fflush(stdout) == 0 ? 0 : 1;
out:
    return rc;
}
