//! etcd for end-to-end tests (Debian's `etcd-server`): one server on
//! ephemeral ports with its data in a temporary directory, plain or TLS.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use etcd_client::Client;

use super::{free_port, wait_for};

/// An etcd server on ephemeral ports with its data in a temporary directory;
/// killed on drop.
pub struct Etcd {
    child: Option<Child>,
    dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
    /// Its certificate and key (self-signed for 127.0.0.1), when it speaks TLS.
    pub tls: Option<(PathBuf, PathBuf)>,
}

fn etcd_binary() -> PathBuf {
    ["/usr/bin/etcd", "/usr/local/bin/etcd"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("etcd is not installed (Debian: apt-get install etcd-server)")
}

impl Etcd {
    pub async fn start() -> Etcd {
        Self::start_with(false).await
    }

    /// An etcd whose clients speak TLS to it.
    pub async fn start_tls() -> Etcd {
        Self::start_with(true).await
    }

    pub async fn start_with(tls: bool) -> Etcd {
        let dir = tempfile::tempdir().unwrap();
        let tls = tls.then(|| {
            let made = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
            let (cert, key) = (dir.path().join("etcd.crt"), dir.path().join("etcd.key"));
            std::fs::write(&cert, made.cert.pem()).unwrap();
            std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
            (cert, key)
        });
        let mut etcd = Etcd {
            child: None,
            dir,
            client_port: free_port(),
            peer_port: free_port(),
            tls,
        };
        etcd.run().await;
        etcd
    }

    pub fn options(&self) -> Option<etcd_client::ConnectOptions> {
        self.tls.as_ref().map(|(cert, _)| {
            let ca = etcd_client::Certificate::from_pem(std::fs::read(cert).unwrap());
            etcd_client::ConnectOptions::new()
                .with_tls(etcd_client::TlsOptions::new().ca_certificate(ca))
        })
    }

    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// Starts (or starts again) the server on the same ports and data.
    pub async fn run(&mut self) {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let client = format!("{scheme}://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let mut command = Command::new(etcd_binary());
        if let Some((cert, key)) = &self.tls {
            command
                .arg("--cert-file")
                .arg(cert)
                .arg("--key-file")
                .arg(key);
        }
        let child = command
            .args(["--name", "t", "--data-dir"])
            .arg(self.dir.path().join("data"))
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("t={peer}")])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.path().join("etcd.log")).unwrap())
            .spawn()
            .expect("start etcd");
        self.child = Some(child);
        let endpoint = self.endpoint();
        let options = self.options();
        wait_for("etcd to answer", || {
            let (endpoint, options) = (endpoint.clone(), options.clone());
            async move {
                match Client::connect([endpoint], options).await {
                    Ok(mut c) => c.get("probe", None).await.is_ok(),
                    Err(_) => false,
                }
            }
        })
        .await;
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub async fn client(&self) -> Client {
        Client::connect([self.endpoint()], self.options())
            .await
            .expect("etcd client")
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}
