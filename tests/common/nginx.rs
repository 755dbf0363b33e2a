//! nginx as a real upstream for end-to-end tests: one foreground process
//! on ephemeral ports, with the `server` blocks a test writes.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use super::wait_for;

/// nginx in the foreground, one process, with `servers` as its `server`
/// blocks; stopped on drop.
pub struct Nginx {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Nginx {
    pub async fn start(dir: tempfile::TempDir, servers: &str, ports: &[u16]) -> Nginx {
        let d = dir.path().display();
        let conf = format!(
            "daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
             events {{}}\nhttp {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  \
             proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  \
             scgi_temp_path {d}/scgi;\n{servers}}}\n"
        );
        let path = dir.path().join("nginx.conf");
        std::fs::write(&path, conf).unwrap();
        let program = ["/usr/sbin/nginx", "/usr/local/sbin/nginx"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .unwrap_or("nginx");
        let child = Command::new(program)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx (Debian: nginx-light) must be installed");
        for &port in ports {
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            wait_for("nginx listening", || async move {
                tokio::net::TcpStream::connect(addr).await.is_ok()
            })
            .await;
        }
        Nginx { child, _dir: dir }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
