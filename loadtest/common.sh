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

# Writes a one-thread hybrid-lb config to file $1: proxy on port $2, dashboard
# on port $3, algorithm $4, sticky mode $5, upstreams b1 and b2 on ports $6, $7.
hybrid_config() {
  pingora_keys "$1"
  cat >> "$1" <<CONF
lb:
  listen: ["127.0.0.1:$2"]
  algorithm: $4
  sticky: { mode: $5, secret: "bench-secret-0123456789abcdef" }
  upstreams:
    - { name: b1, addr: "127.0.0.1:$6", weight: 1 }
    - { name: b2, addr: "127.0.0.1:$7", weight: 1 }
dashboard:
  listen: "127.0.0.1:$3"
CONF
}
