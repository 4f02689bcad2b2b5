#!/usr/bin/env bash
# t/bench_smoke.sh [BUILDDIR] - a few seconds of bench/run (bench/run smoke):
# relays, polls and a drain against a private PostgreSQL and httpd, then
# every 201 checked against the database (exactly one delivery per
# recipient).  One TAP result; the figures it prints are never pass/fail.
top=$(cd "$(dirname "$0")/.." && pwd)
KMDC_BUILD=${1:-$top/_build} exec "$top/bench/run" smoke
