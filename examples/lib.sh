# Sourced by the demos (bash). Needs BIN (the build's bin/ folder) and DATA (the demo's
# data dir). Gives:
#   demo_auth             an admin token for the demo (EPOCH_TOKEN) and EPOCH_DATA_DIR, so
#                         epochctl trusts the certificate epochd generates in DATA/tls
#   api ARGS...           curl with that token and certificate
#   start_epochd NAME ARGS...
#                         epochd on DATA (master.name NAME, log DATA/NAME.log, address in
#                         DATA/NAME.address) with ARGS; its pid in EPOCHD_PID and
#                         PIDS; returns once it has bound its port
#   addr NAME             the address of that epochd
#   wait_ready URL        until URL/readyz answers 200 (it leads), at most 10 s
#   stop_demo             TERM every epochd started, then the data dir's local agents
#                         (containers outlive the master by design), then remove DATA
PIDS=()

demo_auth() {
  export EPOCH_DATA_DIR="$DATA"
  EPOCH_TOKEN=$("$BIN/epochctl" admin token create --user demo --tenant default --role admin 2>/dev/null)
  export EPOCH_TOKEN
}

api() { curl -s --cacert "$DATA/tls/cert.pem" -H "Authorization: Bearer $EPOCH_TOKEN" "$@"; }

start_epochd() {
  local name=$1
  shift
  "$BIN/epochd" --data-dir "$DATA" --set master.name="$name" --address-file "$DATA/$name.address" \
    "$@" >"$DATA/$name.log" 2>&1 &
  EPOCHD_PID=$!
  PIDS+=("$EPOCHD_PID")
  for _ in $(seq 1 100); do [ -s "$DATA/$name.address" ] && break; sleep 0.1; done
  [ -s "$DATA/$name.address" ] || { echo "epochd $name did not start:"; cat "$DATA/$name.log"; exit 1; }
}

addr() { sed -n 's/.*"address":"\([^"]*\)".*/\1/p' "$DATA/$1.address"; }

wait_ready() {
  for _ in $(seq 1 100); do api -f "$1/readyz" >/dev/null && return 0; sleep 0.1; done
  return 1
}

stop_demo() {
  local p
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  pkill -TERM -f "epoch-agent .*--data-dir $DATA" 2>/dev/null || true
  sleep 0.3
  pkill -KILL -f "epoch-agent .*--data-dir $DATA" 2>/dev/null || true
  rm -rf "$DATA"
}
