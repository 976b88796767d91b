#!/usr/bin/env bash
# The tree stays readable: no import cycle between a crate's modules, and no
# source file under a crate's src/ over 600 lines (inline tests count; a big
# test module goes to a sibling tests.rs). Run by .ci/run; prints what breaks.
set -euo pipefail
cd "$(dirname "$0")/.."
status=0
for crate in proto controller director realserver-agent hostnet ctl tests; do
    if ! out=$(scripts/module-cycles.py "$crate/src"); then
        echo "layout: $crate/src has an import cycle:"
        echo "$out"
        status=1
    fi
done
long=$(find proto controller director realserver-agent hostnet ctl tests \
    -path '*/src/*' -name '*.rs' -exec wc -l {} + | awk '$2 != "total" && $1 > 600')
if [ -n "$long" ]; then
    echo "layout: files over 600 lines:"
    echo "$long"
    status=1
fi
# Tests run in parallel, each in its own process: an interface or subnet
# two of them put in the caller's (the host's) namespace collides at random.
clash=$(grep -ho 'plug_caller("[^"]*", "[^"]*", "[^"]*"' tests/tests/it/*.rs |
    awk -F'"' '{ split($6, a, "."); print $4; print a[1] "." a[2] "." a[3] }' | sort | uniq -d)
if [ -n "$clash" ]; then
    echo "layout: tests put the same interface or subnet in the host's namespace:"
    echo "$clash"
    status=1
fi
[ "$status" = 0 ] && echo "layout: no import cycles, no file over 600 lines, no shared test interface"
exit "$status"
