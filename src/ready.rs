//! Says once where the balancer is reachable, as soon as every listener is
//! listening: a newcomer's first question, and a line scripts can wait for.
//! It looks in the kernel's socket table rather than connecting, so that no
//! connection of its own shows in the metrics. The table is read a line at a
//! time: with many sockets in TIME_WAIT it runs to megabytes.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::state::SharedState;

/// How long the listeners get to open before the line is given up on.
const WAIT: Duration = Duration::from_secs(10);

/// The ports in the LISTEN state in a `/proc/net/tcp` table, read a line at
/// a time into one buffer (tens of thousands of lines on a busy host).
pub fn listening_ports(mut table: impl BufRead) -> Vec<u16> {
    let mut ports = Vec::new();
    let mut line = String::new();
    let mut header = true;
    loop {
        line.clear();
        match table.read_line(&mut line) {
            Ok(0) | Err(_) => return ports,
            Ok(_) => {}
        }
        if std::mem::take(&mut header) {
            continue;
        }
        let mut f = line.split_whitespace();
        let (Some(local), Some(state)) = (f.nth(1), f.nth(1)) else {
            continue;
        };
        if state == "0A" {
            let port = local
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            ports.extend(port);
        }
    }
}

fn listening_now() -> Vec<u16> {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|p| File::open(p).ok())
        .flat_map(|f| listening_ports(BufReader::new(f)))
        .collect()
}

/// The line, listing every listener.
pub fn line(state: &SharedState) -> String {
    let lb = &state.config.lb;
    let mut parts: Vec<String> = lb.listen.iter().map(|a| format!("http://{a}")).collect();
    parts.extend(
        lb.tls
            .iter()
            .flat_map(|t| &t.listen)
            .map(|a| format!("https://{a}")),
    );
    format!(
        "listening: proxy {}; dashboard: http://{}/",
        parts.join(", "),
        state.config.dashboard.listen
    )
}

pub struct ReadyService {
    state: Arc<SharedState>,
}

impl ReadyService {
    pub fn new(state: Arc<SharedState>) -> Self {
        ReadyService { state }
    }
}

#[async_trait]
impl BackgroundService for ReadyService {
    async fn start(&self, _shutdown: ShutdownWatch) {
        let lb = &self.state.config.lb;
        let ports: Vec<u16> = lb
            .listen
            .iter()
            .chain(lb.tls.iter().flat_map(|t| &t.listen))
            .chain(std::iter::once(&self.state.config.dashboard.listen))
            .map(SocketAddr::port)
            .collect();
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut pause = Duration::from_millis(10);
        loop {
            let open = listening_now();
            if ports.iter().all(|p| open.contains(p)) {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                log::warn!("not every listener is open after {WAIT:?}");
                return;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(500));
        }
        log::info!("{}", line(&self.state));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_ports_are_read_from_the_socket_table() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue\n\
   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000\n\
   1: 0100007F:1388 0100007F:9C40 01 00000000:00000000 00:00000000 00000000\n";
        assert_eq!(listening_ports(table.as_bytes()), [8080]);
    }
}
