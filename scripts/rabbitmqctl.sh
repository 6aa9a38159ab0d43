#!/usr/bin/env bash
# rabbitmqctl against the node started by scripts/services.sh (same environment), e.g.
#   scripts/rabbitmqctl.sh list_connections name
#   scripts/rabbitmqctl.sh close_connection "<name>" "test"
set -euo pipefail
exec "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/services.sh" rabbitmqctl "$@"
