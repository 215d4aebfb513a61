#!/usr/bin/env bash
# An S3-compatible server (S3Proxy from Maven Central, filesystem backend) for tests and CI.
#
# usage: scripts/s3proxy.sh fetch|start|stop
#
#   fetch   download S3Proxy and its jars with Maven into $S3PROXY_HOME/lib (skipped when there)
#   start   fetch if needed, start the server on 127.0.0.1:$S3PROXY_PORT over a fresh data dir,
#           wait until it answers; prints S3_ENDPOINT=127.0.0.1:<port> on stdout
#   stop    TERM the server started by `start` (its pid file), then KILL after 10 s
#
# Environment: S3PROXY_HOME (default <repo>/.s3proxy), S3PROXY_PORT (default 29500),
# S3PROXY_IDENTITY / S3PROXY_CREDENTIAL (the access key and secret it accepts; defaults below),
# JAVA, MVN. Clients: pyarrow's S3 with AWS_REQUEST_CHECKSUM_CALCULATION=when_required (S3Proxy
# does not take the streaming checksum trailers newer AWS SDKs send by default).
set -euo pipefail
SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$SCRIPT_DIR/.." && pwd)"
S3PROXY_HOME="${S3PROXY_HOME:-$REPO/.s3proxy}"
S3PROXY_PORT="${S3PROXY_PORT:-29500}"
S3PROXY_IDENTITY="${S3PROXY_IDENTITY:-gpuledger-test}"
S3PROXY_CREDENTIAL="${S3PROXY_CREDENTIAL:-gpuledger-test-secret}"
JAVA="${JAVA:-java}"
MVN="${MVN:-mvn}"
LIB="$S3PROXY_HOME/lib"
RUN="$S3PROXY_HOME/run-$S3PROXY_PORT"
log() { echo "s3proxy.sh: $*" >&2; }

fetch() {
  if [[ -f "$LIB/.complete" ]]; then return 0; fi
  mkdir -p "$LIB"
  log "fetching S3Proxy jars into $LIB"
  "$MVN" -q -B -f "$SCRIPT_DIR/s3proxy/pom.xml" package -Ds3proxyLibDir="$LIB" >&2
  touch "$LIB/.complete"
}

start() {
  fetch
  rm -rf "$RUN"; mkdir -p "$RUN/data"
  cat > "$RUN/s3proxy.conf" <<CONF
s3proxy.endpoint=http://127.0.0.1:$S3PROXY_PORT
s3proxy.authorization=aws-v2-or-v4
s3proxy.identity=$S3PROXY_IDENTITY
s3proxy.credential=$S3PROXY_CREDENTIAL
jclouds.provider=filesystem-nio2
jclouds.identity=$S3PROXY_IDENTITY
jclouds.credential=$S3PROXY_CREDENTIAL
jclouds.filesystem.basedir=$RUN/data
CONF
  nohup "$JAVA" -Xmx256m -DLOG_LEVEL=warn -cp "$LIB/*" org.gaul.s3proxy.Main \
    --properties "$RUN/s3proxy.conf" >"$RUN/s3proxy.out" 2>&1 &
  echo $! >"$RUN/pid"
  for _ in $(seq 1 120); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$S3PROXY_PORT") 2>/dev/null; then
      echo "S3_ENDPOINT=127.0.0.1:$S3PROXY_PORT"
      return 0
    fi
    if ! kill -0 "$(cat "$RUN/pid")" 2>/dev/null; then
      log "server exited; last lines of $RUN/s3proxy.out:"; tail -20 "$RUN/s3proxy.out" >&2; exit 1
    fi
    sleep 0.5
  done
  log "no answer on port $S3PROXY_PORT after 60 s"; exit 1
}

stop() {
  [[ -f "$RUN/pid" ]] || return 0
  local pid; pid="$(cat "$RUN/pid")"
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || { rm -f "$RUN/pid"; return 0; }; sleep 0.5; done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$RUN/pid"
}

case "${1:-}" in
  fetch) fetch ;;
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 fetch|start|stop" >&2; exit 2 ;;
esac
