# Helpers shared by the loadtest scripts (sourced, not run).

# A free TCP port on 127.0.0.1.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Waits up to 10 s for 127.0.0.1:$1 to accept connections.
wait_port() {
  for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done
  echo "port $1 never opened" >&2; return 1
}

# Writes Pingora's server keys for a one-thread test instance to file $1.
pingora_keys() {
  cat > "$1" <<CONF
version: 1
threads: 1
work_stealing: false
grace_period_seconds: 1
graceful_shutdown_timeout_seconds: 1
pid_file: $1.pid
upgrade_sock: $1.sock
CONF
}
