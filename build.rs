//! Makes sure Chart.js (from npm, `dashboard/package.json`) is present to be
//! embedded into the binary: runs `npm ci` when `node_modules` is missing, then
//! copies it into `OUT_DIR` only when its content changed, so that an `npm ci`
//! that rewrites the same file does not rebuild the crate.

use std::path::{Path, PathBuf};
use std::process::Command;

const CHART: &str = "dashboard/node_modules/chart.js/dist/chart.umd.min.js";

fn main() {
    println!("cargo:rerun-if-changed=dashboard/package.json");
    println!("cargo:rerun-if-changed=dashboard/package-lock.json");
    if !Path::new(CHART).exists() {
        npm_ci();
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("chart.umd.min.js");
    let chart = std::fs::read(CHART).expect("read Chart.js");
    if std::fs::read(&out).ok().as_deref() != Some(chart.as_slice()) {
        std::fs::write(&out, chart).expect("copy Chart.js into OUT_DIR");
    }
}

fn npm_ci() {
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir("dashboard")
        .status();
    let problem = match status {
        Ok(s) if s.success() && Path::new(CHART).exists() => return,
        Ok(s) => format!("`npm ci` in dashboard/ failed ({s})"),
        Err(e) => format!("npm could not be run ({e})"),
    };
    eprintln!(
        "\nerror: hybrid-lb embeds Chart.js from dashboard/node_modules, which is missing, \
         and {problem}.\nInstall Node.js and npm, then run `npm ci` in dashboard/ and build again.\n"
    );
    std::process::exit(1);
}
