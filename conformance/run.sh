#!/usr/bin/env bash
# Run the Autobahn WebSocket testsuite against a server or a client, without Docker.
#
# Usage:
#   conformance/run.sh server [options] [-- summarize.py options]
#       start the server command, point `wstest -m fuzzingclient` at ws://127.0.0.1:PORT (wss:// with --tls)
#   conformance/run.sh client [options] [-- summarize.py options]
#       start `wstest -m fuzzingserver` on 127.0.0.1:PORT (default 9001) and run the client command against it
#   conformance/run.sh install [--force]
#       only install wstest (same as conformance/install.sh)
#
# Options:
#   --cmd CMD         server or client command, run with bash (placeholders below); defaults:
#                       server: {python} conformance/echo_server.py --port {port}
#                               (+ --certfile {certfile} --keyfile {keyfile} with --tls)
#                       client: {python} conformance/echo_client.py --url {url} --agent {agent}
#                               (+ --cafile {cafile} with --tls)
#   --agent NAME      agent name in the reports (default uringws; passed to the default client as --agent)
#   --port N          server mode: port for the server (default: a free one); client mode: wstest port (9001)
#   --tls             use wss:// with a throwaway certificate made at run time by trustme
#   --cases LIST      comma-separated case ids or patterns, e.g. '1.*,2.*,9.1.1' (default '*')
#   --exclude LIST    comma-separated case ids or patterns to skip, e.g. '12.*,13.*'
#   --outdir DIR      report directory (default reports/autobahn/<mode>[-tls]/<agent>, gitignored)
#   --timeout SEC     give up after SEC seconds (default 3600; a full run takes 4-15 min, more when loaded)
#   --python PY       Python 3 for {python}, trustme and summarize.py (default .venv/bin/python or python3)
#   --uring           run the peer script under uringws's io_uring event loop ({python} becomes a launcher that
#                     installs it as asyncio's loop, then runs the script); without it, the stdlib loop
#   --quiet           do not stream wstest's per-case output (it always goes to <outdir>/wstest.log)
# Everything after `--` goes to summarize.py, e.g. `-- --max-failed 0 --min-ok 500` to gate CI.
#
# Placeholders in --cmd: {python} {port} {url} {agent} {certfile} {keyfile} {cafile} {repo}. The same values
# are exported as AUTOBAHN_URL, AUTOBAHN_PORT, AUTOBAHN_AGENT, AUTOBAHN_CERTFILE, AUTOBAHN_KEYFILE, AUTOBAHN_CAFILE.
#
# Exit status: summarize.py's (0 unless a gate from `--` failed), or 2 usage, 3 no Python 2.7, 4 harness failure
# (peer did not start, wstest crashed or timed out, no report written).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"

die() { printf 'run.sh: %s\n' "$1" >&2; exit "${2:-4}"; }  # die MESSAGE [EXIT_CODE]
log() { printf 'run.sh: %s\n' "$*" >&2; }
usage() { sed -n '2,35p' "$0"; }

mode="${1:-}"
[[ -n "$mode" ]] || { usage; exit 2; }
shift
case "$mode" in
    server|client) ;;
    install) exec "$HERE/install.sh" "$@" ;;
    -h|--help|help) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
esac

cmd="" agent="uringws" port="" tls=0 cases="*" exclude="" outdir="" timeout_s=3600 python="" quiet=0 uring=0
summarize_args=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --cmd) cmd="$2"; shift 2 ;;
        --agent) agent="$2"; shift 2 ;;
        --port) port="$2"; shift 2 ;;
        --tls) tls=1; shift ;;
        --cases) cases="$2"; shift 2 ;;
        --exclude) exclude="$2"; shift 2 ;;
        --outdir) outdir="$2"; shift 2 ;;
        --timeout) timeout_s="$2"; shift 2 ;;
        --python) python="$2"; shift 2 ;;
        --quiet) quiet=1; shift ;;
        --uring) uring=1; shift ;;
        --) shift; summarize_args=("$@"); break ;;
        *) die "unknown option: $1 (see --help)" 2 ;;
    esac
done

# Keep reports of the two loops apart unless the user named the agent.
if [[ $uring -eq 1 && "$agent" == uringws ]]; then agent="uringws-uring"; fi
if [[ -z "$python" ]]; then
    if [[ -x "$REPO/.venv/bin/python" ]]; then python="$REPO/.venv/bin/python"; else python="$(command -v python3)"; fi
fi

# Install (or verify) wstest first; install.sh is a no-op when the virtualenv is already good.
set +e
wstest="$("$HERE/install.sh" | tail -n 1)"
rc=$?
set -e
[[ $rc -eq 0 ]] || exit "$rc"

scheme="ws" suffix=""
if [[ $tls -eq 1 ]]; then scheme="wss" suffix="-tls"; fi
if [[ -z "$port" ]]; then
    if [[ "$mode" == client ]]; then
        port=9001
    else
        port="$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    fi
fi
url="$scheme://127.0.0.1:$port"
[[ -n "$outdir" ]] || outdir="$REPO/reports/autobahn/$mode$suffix/$agent"
mkdir -p "$outdir"
outdir="$(cd "$outdir" && pwd)"
# Two runs writing one directory overwrite each other's case files (seen on the shared machine), so a run holds
# a lock on its directory; a second run with the same default directory moves to a fresh one.
exec 9>"$outdir/.lock"
if ! flock -n 9; then
    outdir="$outdir.$$"
    log "another run is using the report directory; writing to $outdir instead"
    mkdir -p "$outdir"
    exec 9>"$outdir/.lock"
    flock -n 9 || die "cannot lock $outdir"
fi
# A stale index.json from an earlier run would be summarized as if it were this run's.
rm -f "$outdir/index.json"

work="$(mktemp -d "${TMPDIR:-/tmp}/uringws-autobahn.XXXXXX")"
peer_pid="" job_pid="" job_cpu="?" peer_cpu="?"
# shellcheck disable=SC2329  # called by the EXIT trap
cleanup() {
    # The foreground job (wstest or the client) runs under `timeout`, which forwards TERM to its child.
    if [[ -n "$job_pid" ]] && kill -0 "$job_pid" 2>/dev/null; then
        kill -TERM "$job_pid" 2>/dev/null || true
        wait "$job_pid" 2>/dev/null || true
    fi
    # Stop the process group we started (setsid below), politely first.
    if [[ -n "$peer_pid" ]] && kill -0 "$peer_pid" 2>/dev/null; then
        kill -TERM -- "-$peer_pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$peer_pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL -- "-$peer_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

certfile="" keyfile="" cafile=""
if [[ $tls -eq 1 ]]; then
    certfile="$work/cert.pem" keyfile="$work/key.pem" cafile="$work/ca.pem"
    "$python" - "$certfile" "$keyfile" "$cafile" <<'EOF' || die "could not make a certificate with trustme (pip install trustme)"
import sys
import trustme

certfile, keyfile, cafile = sys.argv[1:4]
ca = trustme.CA()
cert = ca.issue_cert("127.0.0.1", "localhost")
with open(certfile, "wb") as f:
    f.write(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
cert.private_key_pem.write_to_path(keyfile)
ca.cert_pem.write_to_path(cafile)
EOF
fi

if [[ -z "$cmd" ]]; then
    if [[ "$mode" == server ]]; then
        cmd="{python} conformance/echo_server.py --port {port}"
        [[ $tls -eq 1 ]] && cmd+=" --certfile {certfile} --keyfile {keyfile}"
    else
        cmd="{python} conformance/echo_client.py --url {url} --agent {agent}"
        [[ $tls -eq 1 ]] && cmd+=" --cafile {cafile}"
    fi
fi
# --uring: an event loop policy makes every asyncio.run() in the script build uringws's public loop (the ring loop
# with uringws's own TLS transport, uringws.new_event_loop), so the peer
# scripts run unchanged on the ring. (Policies are deprecated from Python 3.14; the project targets 3.11-3.13.)
URING_LAUNCHER='import asyncio, runpy, sys
from uringws import new_event_loop
class Policy(asyncio.DefaultEventLoopPolicy):
    def new_event_loop(self):
        return new_event_loop()
asyncio.set_event_loop_policy(Policy())
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")'
pycmd="$python"
[[ $uring -eq 1 ]] && pycmd="$python -c '$URING_LAUNCHER'"
expand() {
    local s="$1"
    s="${s//\{python\}/$pycmd}"; s="${s//\{port\}/$port}"; s="${s//\{url\}/$url}"; s="${s//\{agent\}/$agent}"
    s="${s//\{certfile\}/$certfile}"; s="${s//\{keyfile\}/$keyfile}"; s="${s//\{cafile\}/$cafile}"
    s="${s//\{repo\}/$REPO}"
    printf '%s' "$s"
}
cmd="$(expand "$cmd")"
export AUTOBAHN_URL="$url" AUTOBAHN_PORT="$port" AUTOBAHN_AGENT="$agent"
export AUTOBAHN_CERTFILE="$certfile" AUTOBAHN_KEYFILE="$keyfile" AUTOBAHN_CAFILE="$cafile"

# wstest reads case patterns and excludes from its spec file; the JSON is written by Python so that any
# characters in the arguments are quoted correctly.
spec="$work/spec.json"
"$python" - "$mode" "$spec" "$url" "$agent" "$outdir" "$cases" "$exclude" "$certfile" "$keyfile" <<'EOF'
import json
import sys

mode, path, url, agent, outdir, cases, exclude, certfile, keyfile = sys.argv[1:10]
split = lambda text: [item.strip() for item in text.split(",") if item.strip()]
spec = {
    "outdir": outdir,
    "cases": split(cases) or ["*"],
    "exclude-cases": split(exclude),
    "exclude-agent-cases": {},
}
if mode == "server":
    # No "hostname" key: wstest then uses Twisted's ClientContextFactory, which does not verify the
    # certificate, so a throwaway self-signed one works for wss://.
    spec["options"] = {"failByDrop": False}
    spec["servers"] = [{"agent": agent, "url": url}]
else:
    spec["url"] = url
    if certfile:
        # wstest 25.10.1 ignores its -c/-k options in fuzzingserver mode and reads these spec keys instead.
        spec["cert"], spec["key"] = certfile, keyfile
with open(path, "w") as f:
    json.dump(spec, f, indent=2)
EOF
cp "$spec" "$outdir/spec.json"

wait_port() {  # wait_port PID SECONDS: until 127.0.0.1:$port accepts TCP, or PID exits, or time is up
    local pid="$1" deadline=$((SECONDS + $2))
    while (( SECONDS < deadline )); do
        kill -0 "$pid" 2>/dev/null || return 1
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    return 1
}
has_io_uring_fd() {  # has_io_uring_fd PID: does the process hold an io_uring instance (anon_inode:[io_uring])?
    local fd
    for fd in "/proc/$1/fd/"*; do
        [[ "$(readlink "$fd" 2>/dev/null)" == *io_uring* ]] && return 0
    done
    return 1
}
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; }

# cpu_of PID: user+system CPU seconds of a running process (and its waited-for children), from /proc.
cpu_of() {
    awk -v hz="$(getconf CLK_TCK)" '{ printf "%.1f", ($14 + $15 + $16 + $17) / hz }' "/proc/$1/stat" 2>/dev/null || echo "?"
}

# run_job LOG CMD...: run CMD in the background with output to LOG (streamed unless --quiet) and wait for it.
# In the background, not the foreground: bash runs traps only between foreground commands, so a TERM to this
# script would otherwise leave wstest running until it finished on its own.
run_job() {
    local logfile="$1" tail_pid="" rc=0
    shift
    "$@" > "$logfile" 2>&1 &
    job_pid=$!
    if [[ $quiet -eq 0 ]]; then tail -n +1 -f --pid="$job_pid" "$logfile" & tail_pid=$!; fi
    # The `time` keyword reports the CPU of the job and everything it waited for (wstest under `timeout`);
    # wall time alone says little on a shared 2-core machine.
    local TIMEFORMAT="%U %S"
    { time wait "$job_pid" 2>/dev/null; } 2>"$work/job_cpu" || rc=$?
    job_cpu="$(awk '{ printf "%.1f", $1 + $2 }' "$work/job_cpu")"
    job_pid=""
    [[ -z "$tail_pid" ]] || wait "$tail_pid" 2>/dev/null || true
    return "$rc"
}

start=$EPOCHREALTIME
cd "$REPO"
port_busy && die "port $port on 127.0.0.1 is already in use"
if [[ "$mode" == server ]]; then
    log "server: $cmd"
    setsid bash -c "exec $cmd" > "$outdir/peer.log" 2>&1 &
    peer_pid=$!
    wait_port "$peer_pid" 30 || { tail -n 20 "$outdir/peer.log" >&2; die "server did not listen on port $port within 30 s (log: $outdir/peer.log)"; }
    if [[ $uring -eq 1 ]] && ! has_io_uring_fd "$peer_pid"; then
        log "warning: --uring given but the server process has no io_uring file descriptor (epoll fallback?)"
    fi
    log "fuzzingclient -> $url, cases '$cases' exclude '$exclude', reports in $outdir"
    rc=0
    run_job "$outdir/wstest.log" timeout --kill-after=10 "$timeout_s" "$wstest" -m fuzzingclient -s "$spec" || rc=$?
    [[ $rc -eq 0 ]] || die "wstest exited with $rc$([[ $rc -eq 124 ]] && echo " (timed out after $timeout_s s)") (log: $outdir/wstest.log)"
    kill -0 "$peer_pid" 2>/dev/null || log "warning: the server exited during the run (log: $outdir/peer.log)"
    peer_cpu="$(cpu_of "$peer_pid")"
    wstest_cpu="$job_cpu"
else
    log "fuzzingserver on $url, cases '$cases' exclude '$exclude', reports in $outdir"
    # -u 0: no embedded web server (it would take port 8080).
    (cd "$work" && exec setsid "$wstest" -m fuzzingserver -s "$spec" -u 0) > "$outdir/wstest.log" 2>&1 &
    peer_pid=$!
    wait_port "$peer_pid" 60 || { tail -n 20 "$outdir/wstest.log" >&2; die "wstest fuzzingserver did not listen on port $port"; }
    log "client: $cmd"
    rc=0
    run_job "$outdir/peer.log" timeout --kill-after=10 "$timeout_s" bash -c "exec $cmd" || rc=$?
    peer_cpu="$job_cpu"
    wstest_cpu="$(cpu_of "$peer_pid")"
    [[ $rc -eq 0 ]] || log "warning: client exited with $rc$([[ $rc -eq 124 ]] && echo " (timed out after $timeout_s s)") (log: $outdir/peer.log)"
fi
elapsed="$(awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')"

[[ -f "$outdir/index.json" ]] || die "no report was written ($outdir/index.json missing; logs in $outdir)"
log "finished in ${elapsed} s (CPU: wstest ${wstest_cpu} s, $mode ${peer_cpu} s; load average $(cut -d' ' -f1-3 /proc/loadavg)); report index: $outdir/index.json"
printf 'elapsed_seconds=%s\nwstest_cpu_seconds=%s\npeer_cpu_seconds=%s\nloadavg=%s\n' \
    "$elapsed" "$wstest_cpu" "$peer_cpu" "$(cut -d' ' -f1-3 /proc/loadavg)" > "$outdir/timing.txt"
# Not exec: the EXIT trap must still stop the peer and remove the temporary directory.
set +e
"$python" "$HERE/summarize.py" "$outdir/index.json" "${summarize_args[@]}"
exit $?
