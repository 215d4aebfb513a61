#!/usr/bin/env bash
# Single-node Apache Kafka 4.x (KRaft, combined broker+controller) for tests/CI.
#
# usage: scripts/kafka.sh fetch|start|stop|restart-keep|status
#
#   fetch         download Kafka + deps with Maven into $KAFKA_HOME/lib
#                 (skipped when lib/ is complete for the current pom.xml)
#   start         fetch if needed, format a FRESH data dir, start the broker in the
#                 background and wait until it is ready; prints
#                 KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:<port> on stdout.
#                 No-op success if already running and healthy.
#                 KAFKA_KEEP_DATA=1 reuses an already formatted data dir.
#   stop          TERM, wait up to 30 s, then KILL. Safe when not running.
#   restart-keep  stop + start with KAFKA_KEEP_DATA=1 (data survives: "outage" tests)
#   status        exit 0 if the broker process is running, 1 otherwise
#
# Environment:
#   KAFKA_HOME             default <repo>/.kafka   (lib/ = jars, run/ = config, data, logs)
#   KAFKA_PORT             default 19092 (PLAINTEXT listener)
#   KAFKA_CONTROLLER_PORT  default 19093 (CONTROLLER listener)
#   KAFKA_KEEP_DATA        1 = keep/reuse the formatted data dir on start
#   KAFKA_START_TIMEOUT    seconds to wait for readiness, default 90
#   KAFKA_JVM_OPTS         extra JVM options for the broker
#   KAFKA_MVN_ARGS         extra Maven arguments for fetch (e.g. "-o" for offline)
#   JAVA / JAVA_HOME, MVN  java / mvn executables
#
# Only the KAFKA_BOOTSTRAP_SERVERS line goes to stdout; diagnostics go to stderr.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$SCRIPT_DIR/.." && pwd)"

KAFKA_HOME="${KAFKA_HOME:-$REPO/.kafka}"
KAFKA_PORT="${KAFKA_PORT:-19092}"
KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-19093}"
KAFKA_KEEP_DATA="${KAFKA_KEEP_DATA:-0}"
KAFKA_START_TIMEOUT="${KAFKA_START_TIMEOUT:-90}"
KAFKA_STOP_TIMEOUT=30
if [[ -z "${JAVA:-}" ]]; then
  if [[ -n "${JAVA_HOME:-}" && -x "$JAVA_HOME/bin/java" ]]; then JAVA="$JAVA_HOME/bin/java"; else JAVA=java; fi
fi
MVN="${MVN:-mvn}"

POM="$SCRIPT_DIR/kafka/pom.xml"
LOG4J_CONF="$SCRIPT_DIR/kafka/log4j2.properties"

log() { echo "kafka.sh: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

init_paths() {
  mkdir -p "$KAFKA_HOME"
  KAFKA_HOME="$(cd "$KAFKA_HOME" && pwd)"
  LIB="$KAFKA_HOME/lib"
  RUN="$KAFKA_HOME/run"
  DATA="$RUN/data"
  CONF="$RUN/server.properties"
  PIDFILE="$RUN/kafka.pid"
  OUTLOG="$RUN/kafka.out"      # JVM stdout/stderr
  SERVERLOG="$RUN/server.log"  # log4j2 file appender (see kafka/log4j2.properties)
  PORTSFILE="$RUN/data.ports"  # listener ports the data dir was formatted for
}

# Serialise fetch/start/stop across concurrent callers (CI jobs, xdist workers).
take_lock() {
  command -v flock >/dev/null 2>&1 || return 0
  exec 9>"$KAFKA_HOME/.lock"
  flock -w 600 9 || die "timed out waiting for $KAFKA_HOME/.lock"
}

pom_hash() { sha256sum "$POM" | cut -d' ' -f1; }

lib_complete() {
  [[ -f "$LIB/.stamp" && "$(cat "$LIB/.stamp")" == "$(pom_hash)" ]] &&
    compgen -G "$LIB/kafka_2.13-*.jar" >/dev/null
}

fetch() {
  if lib_complete; then return 0; fi
  command -v "$MVN" >/dev/null 2>&1 || die "mvn not found (set MVN=...)"
  local tmp="$KAFKA_HOME/lib.tmp"
  rm -rf "$tmp"
  log "fetching Kafka jars with Maven into $LIB ..."
  # Maven output goes to a log (Maven 3.8 prints stray ANSI resets even with -q -B).
  # shellcheck disable=SC2086
  if ! "$MVN" -q -B ${KAFKA_MVN_ARGS:-} -f "$POM" package -DkafkaLibDir="$tmp" >"$KAFKA_HOME/mvn.log" 2>&1; then
    tail -n 50 "$KAFKA_HOME/mvn.log" >&2
    rm -rf "$tmp"
    die "maven fetch failed (full output: $KAFKA_HOME/mvn.log)"
  fi
  compgen -G "$tmp/kafka_2.13-*.jar" >/dev/null || { rm -rf "$tmp"; die "maven produced no kafka jar"; }
  pom_hash >"$tmp/.stamp"
  rm -rf "$LIB"
  mv "$tmp" "$LIB"
}

check_java() {
  command -v "$JAVA" >/dev/null 2>&1 || die "java not found (set JAVA or JAVA_HOME)"
  local v
  v="$("$JAVA" -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java\.specification\.version = //p')"
  [[ "${v%%.*}" =~ ^[0-9]+$ && "${v%%.*}" -ge 17 ]] || die "Kafka 4.x needs Java 17+, $JAVA is '${v:-unknown}'"
}

# Is $1 a live (non-zombie) broker process started from our $CONF?
is_our_broker() {
  local pid=$1 cmd
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  if [[ -d /proc/$pid ]]; then
    cmd="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)"  # empty for zombies
    [[ "$cmd" == *"kafka.Kafka $CONF"* ]] || return 1
  fi
  return 0
}

# Prints the broker pid and returns 0 if it is running.
broker_pid() {
  [[ -f "$PIDFILE" ]] || return 1
  local pid
  pid="$(cat "$PIDFILE" 2>/dev/null || true)"
  is_our_broker "$pid" || return 1
  echo "$pid"
}

port_open() {
  if command -v timeout >/dev/null 2>&1; then
    timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null
  else
    bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null
  fi
}

# Ready = port accepts TCP and the server logged its "started" line
# (KafkaRaftServer logs it after the broker got unfenced by the controller).
is_ready() {
  port_open "$KAFKA_PORT" && grep -q 'Kafka Server started' "$SERVERLOG" 2>/dev/null
}

print_logs() {
  local f
  for f in "$SERVERLOG" "$OUTLOG"; do
    [[ -s "$f" ]] || continue
    echo "----- last 50 lines of $f -----" >&2
    tail -n 50 "$f" >&2
  done
}

write_config() {
  cat >"$CONF" <<EOF
# generated by scripts/kafka.sh -- single-node KRaft (combined broker+controller)
process.roles=broker,controller
node.id=1
# dynamic quorum (KIP-853), matching 'kafka-storage format --standalone';
# controller.quorum.voters must NOT be set together with --standalone
controller.quorum.bootstrap.servers=127.0.0.1:${KAFKA_CONTROLLER_PORT}
controller.listener.names=CONTROLLER
listeners=PLAINTEXT://127.0.0.1:${KAFKA_PORT},CONTROLLER://127.0.0.1:${KAFKA_CONTROLLER_PORT}
advertised.listeners=PLAINTEXT://127.0.0.1:${KAFKA_PORT}
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=${DATA}
num.partitions=4
auto.create.topics.enable=true
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
# tests send a 10 MB payload that must reach the consumer
message.max.bytes=16777216
replica.fetch.max.bytes=16777216
log.retention.hours=168
EOF
}

storage_tool() {
  "$JAVA" -Xmx256m -cp "$LIB/*" \
    -Dlog4j2.configurationFile="$LOG4J_CONF" -Dkafka.logs.dir="$RUN" -Dkafka.log.file=tool.log \
    kafka.tools.StorageTool "$@"
}

format_storage() {
  local cid
  rm -rf "$DATA"
  mkdir -p "$DATA"
  cid="$(storage_tool random-uuid 2>>"$RUN/format.out" | tail -n 1)"
  [[ -n "$cid" ]] || { cat "$RUN/format.out" >&2; die "random-uuid failed"; }
  if ! storage_tool format --standalone -t "$cid" -c "$CONF" >>"$RUN/format.out" 2>&1; then
    cat "$RUN/format.out" >&2
    die "storage format failed"
  fi
  echo "$KAFKA_PORT $KAFKA_CONTROLLER_PORT" >"$PORTSFILE"
  log "formatted $DATA (cluster id $cid)"
}

stop_broker() {
  local pid i
  if ! pid="$(broker_pid)"; then
    rm -f "$PIDFILE"
    log "not running"
    return 0
  fi
  log "stopping broker pid $pid ..."
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < KAFKA_STOP_TIMEOUT * 5; i++)); do
    is_our_broker "$pid" || break
    sleep 0.2
  done
  if is_our_broker "$pid"; then
    log "still alive after ${KAFKA_STOP_TIMEOUT}s, sending KILL"
    kill -KILL "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
      is_our_broker "$pid" || break
      sleep 0.2
    done
  fi
  is_our_broker "$pid" && die "could not stop pid $pid"
  rm -f "$PIDFILE"
  log "stopped"
}

start_broker() {
  local pid deadline
  fetch
  mkdir -p "$RUN"

  if pid="$(broker_pid)"; then
    deadline=$((SECONDS + KAFKA_START_TIMEOUT))
    while ((SECONDS < deadline)) && is_our_broker "$pid" && ! is_ready; do sleep 0.5; done
    if is_our_broker "$pid" && is_ready; then
      log "already running (pid $pid)"
      echo "KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:${KAFKA_PORT}"
      return 0
    fi
    log "running but not healthy; restarting"
    stop_broker
  fi
  rm -f "$PIDFILE"

  check_java
  local p
  for p in "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT"; do
    port_open "$p" && die "port $p is already in use by another process (set KAFKA_PORT/KAFKA_CONTROLLER_PORT)"
  done

  write_config
  : >"$RUN/format.out"
  if [[ "$KAFKA_KEEP_DATA" == 1 && -f "$DATA/meta.properties" ]]; then
    # The standalone voter set stored in the metadata log records the controller
    # endpoint; reusing the data with different ports would break the quorum.
    if [[ -f "$PORTSFILE" && "$(cat "$PORTSFILE")" != "$KAFKA_PORT $KAFKA_CONTROLLER_PORT" ]]; then
      die "data dir was formatted for ports '$(cat "$PORTSFILE")', not '$KAFKA_PORT $KAFKA_CONTROLLER_PORT'; start without KAFKA_KEEP_DATA=1"
    fi
    log "reusing existing data dir $DATA"
  else
    format_storage
  fi

  for p in "$SERVERLOG" "$OUTLOG"; do
    [[ -f "$p" ]] && mv -f "$p" "$p.prev"
  done

  # setsid: own session, so a Ctrl-C to the test runner does not hit the broker.
  # fd 9 (lock) closed and stdio redirected, so callers that capture our output
  # (e.g. subprocess.run(capture_output=True)) are not kept waiting.
  local setsid=()
  command -v setsid >/dev/null 2>&1 && setsid=(setsid)
  rm -f "$PIDFILE"
  # shellcheck disable=SC2086
  nohup "${setsid[@]}" bash -c 'echo $$ >"$1"; shift; exec "$@"' _ "$PIDFILE" \
    "$JAVA" -Xms256m -Xmx512m -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$LOG4J_CONF" -Dkafka.logs.dir="$RUN" -Dkafka.log.file=server.log \
    ${KAFKA_JVM_OPTS:-} \
    -cp "$LIB/*" kafka.Kafka "$CONF" \
    </dev/null >"$OUTLOG" 2>&1 9>&- &
  local launcher=$!

  deadline=$((SECONDS + KAFKA_START_TIMEOUT))
  while ((SECONDS < deadline)); do
    pid="$(cat "$PIDFILE" 2>/dev/null || true)"
    if [[ -n "$pid" ]] && is_our_broker "$pid"; then
      if is_ready; then
        log "broker ready (pid $pid)"
        echo "KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:${KAFKA_PORT}"
        return 0
      fi
    elif [[ -n "$pid" ]] || ! kill -0 "$launcher" 2>/dev/null; then
      # started and died already
      sleep 0.5
      pid="$(cat "$PIDFILE" 2>/dev/null || true)"
      if ! is_our_broker "$pid"; then
        log "broker process exited during startup"
        print_logs
        rm -f "$PIDFILE"
        exit 1
      fi
    fi
    sleep 0.5
  done
  log "broker not ready after ${KAFKA_START_TIMEOUT}s"
  print_logs
  stop_broker || true
  exit 1
}

status_broker() {
  local pid
  if pid="$(broker_pid)"; then
    if is_ready; then
      log "running (pid $pid), ready at 127.0.0.1:${KAFKA_PORT}"
    else
      log "running (pid $pid), not ready yet"
    fi
    return 0
  fi
  log "not running"
  return 1
}

usage() {
  sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}" >&2
}

main() {
  local cmd="${1:-}"
  case "$cmd" in
    fetch | start | stop | restart-keep | status) ;;
    -h | --help | help) usage; return 0 ;;
    *) usage; return 2 ;;
  esac
  init_paths
  case "$cmd" in
    fetch) take_lock; fetch; log "lib ready: $LIB" ;;
    start) take_lock; start_broker ;;
    stop) take_lock; stop_broker ;;
    restart-keep) take_lock; stop_broker; KAFKA_KEEP_DATA=1; start_broker ;;
    status) status_broker ;;
  esac
}

main "$@"
