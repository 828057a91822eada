#!/bin/sh
# test_status_page.sh -- run the status page's browser test (test_status_page.py)
# with Debian's python3, which sees python3-selenium (a python3 earlier in
# PATH, such as a pyenv one, may not). tests/run.sh counts its cmocka-style lines.
exec /usr/bin/python3 "$(dirname "$0")/test_status_page.py" "$@"
